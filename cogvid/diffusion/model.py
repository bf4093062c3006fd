"""The diffusion model of one CogVideoX variant: the DiT and its denoiser, built from a composed config.

It is what SAT's SATVideoDiffusionEngine holds as `model` and `denoiser`; the VAE and T5 stay outside
(`cogvid.models.frozen`), and sampling is the free function `cogvid.diffusion.sampling.sample_latents`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from cogvid.diffusion.denoiser import DiscreteDenoiser
from cogvid.models.dit import DiffusionTransformer
from cogvid.models.lora import lora_rank
from cogvid.sat.checkpoint import load_backbone_state, load_lora_adapters, read_lora_adapters, read_sat_state_dict
from cogvid.utils.errors import CogvidError

log = logging.getLogger(__name__)


@dataclass
class DiffusionModel:
    """backbone: the DiT (the only nn.Module, and the only trained part); denoiser: v-prediction to x0 over the
    ZeroSNR table of the model's shift_scale; cfg: the composed `model` config both were built from."""

    cfg: DictConfig
    backbone: DiffusionTransformer
    denoiser: DiscreteDenoiser

    @classmethod
    def from_model_config(cls, model_cfg) -> DiffusionModel:
        """A freshly initialised model (no weights loaded)."""
        return cls(model_cfg, DiffusionTransformer(model_cfg), DiscreteDenoiser(model_cfg.shift_scale))

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device


def build_model(cfg) -> DiffusionModel:
    """The model of a composed config (see `cogvid.compose`), with `model.ckpt` strictly loaded when it is set,
    and then the adapters of `model.lora_ckpt` (a LoRA trained on that base; its rank sets `model.lora_rank`)."""
    lora_file = cfg.model.get("lora_ckpt")
    adapters = read_lora_adapters(lora_file) if lora_file else None
    model_cfg = cfg.model if adapters is None else _with_lora_rank(cfg.model, lora_rank(adapters), lora_file)
    model = DiffusionModel.from_model_config(model_cfg)
    if cfg.model.get("ckpt"):
        state, _ = read_sat_state_dict(cfg.model.ckpt)
        report = load_backbone_state(model.backbone, state)
        log.debug("model.ckpt=%s: %s", cfg.model.ckpt, report)
    if adapters is not None:
        load_lora_adapters(model.backbone, adapters)
        log.info("model.lora_ckpt=%s: %d adapter matrices of rank %d", lora_file, len(adapters), lora_rank(adapters))
    return model


def _with_lora_rank(model_cfg, rank: int, lora_file) -> DictConfig:
    """`model_cfg` with LoRA layers of the adapters' rank (a rank set to something else is refused)."""
    if model_cfg.lora_rank not in (0, rank):
        raise CogvidError(
            f"model.lora_ckpt={lora_file} has adapters of rank {rank}, but model.lora_rank={model_cfg.lora_rank}: "
            f"leave model.lora_rank unset (or set it to {rank})"
        )
    return OmegaConf.merge(model_cfg, {"lora_rank": rank})
