"""The diffusion model of one CogVideoX variant: the DiT and its denoiser, built from a composed config.

It is what SAT's SATVideoDiffusionEngine holds as `model` and `denoiser`; the VAE and T5 stay outside
(`cogvid.models.frozen`), and sampling is the free function `cogvid.diffusion.sampling.sample_latents`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from cogvid.diffusion.denoiser import DiscreteDenoiser
from cogvid.models.dit import DiffusionTransformer
from cogvid.sat.checkpoint import load_backbone_state, read_sat_state_dict

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
    """The model of a composed config (see `cogvid.compose`), with `model.ckpt` strictly loaded when it is set."""
    model = DiffusionModel.from_model_config(cfg.model)
    if cfg.model.get("ckpt"):
        state, _ = read_sat_state_dict(cfg.model.ckpt)
        report = load_backbone_state(model.backbone, state)
        log.debug("model.ckpt=%s: %s", cfg.model.ckpt, report)
    return model
