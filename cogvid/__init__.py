"""cogvid: CogVideoX as its authors ran it in SAT, composed by Hydra."""

from cogvid.config.compose import compose
from cogvid.utils.errors import CogvidError

__all__ = ["CogvidError", "build_engine", "compose"]


def build_engine(cfg):
    """Build the engine (backbone, denoiser, sampler) from a composed config; see cogvid.engine."""
    from cogvid.engine import build_engine as _build

    return _build(cfg)
