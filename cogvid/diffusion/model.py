"""The diffusion model of one CogVideoX variant: the DiT and its denoiser, built from a composed config.

It is what SAT's SATVideoDiffusionEngine holds as `model` and `denoiser`; the VAE and T5 stay outside, the loaders
(`build_model` among them) live in `cogvid.sat.loading`, and sampling is the free function
`cogvid.diffusion.sampling.sample_latents`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from cogvid.diffusion.denoiser import DiscreteDenoiser
from cogvid.models.dit import DiffusionTransformer


@dataclass
class DiffusionModel:
    """backbone: the DiT (the only nn.Module, and the only trained part); denoiser: v-prediction to x0 over the
    ZeroSNR table of the model's shift_scale; cfg: the composed `model` config both were built from."""

    cfg: DictConfig
    backbone: DiffusionTransformer
    denoiser: DiscreteDenoiser

    @classmethod
    def from_model_config(cls, model_cfg) -> DiffusionModel:
        """A freshly initialised model (no weights loaded): the noise schedule, then the network."""
        denoiser = DiscreteDenoiser(model_cfg.shift_scale)
        return cls(model_cfg, DiffusionTransformer(model_cfg), denoiser)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device
