"""cogvid: CogVideoX as its authors ran it in SAT, composed by Hydra."""

from cogvid.config.compose import compose
from cogvid.utils.errors import CogvidError

__all__ = ["CogvidError", "build_model", "compose"]


def build_model(cfg):
    """The diffusion model (DiT backbone + denoiser) of a composed config, with `model.ckpt` loaded when set;
    see cogvid.sat.loading."""
    from cogvid.sat.loading import build_model as _build

    return _build(cfg.model)
