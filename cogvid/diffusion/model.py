"""The diffusion model of one CogVideoX variant: the DiT and its denoiser, built from a composed config.

It is what SAT's SATVideoDiffusionEngine holds as `model` and `denoiser`; the VAE and T5 stay outside, the loaders
(`build_model` among them) live in `cogvid.sat.loading`, and sampling is the free function
`cogvid.diffusion.sampling.sample_latents`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from cogvid.diffusion.denoiser import DiscreteDenoiser
from cogvid.models.dit import DiffusionTransformer
from cogvid.models.lora import lora_rank
from cogvid.models.state import load_backbone_state, load_lora_adapters
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
        """A freshly initialised model (no weights loaded): the noise schedule, then the network."""
        denoiser = DiscreteDenoiser(model_cfg.shift_scale)
        return cls(model_cfg, DiffusionTransformer(model_cfg), denoiser)

    @classmethod
    def from_weights(cls, model_cfg, dit_state=None, adapters=None) -> DiffusionModel:
        """The model with the DiT tensors `dit_state` (read from `model_cfg.ckpt`) strictly loaded, and then the
        LoRA `adapters` (read from `model_cfg.lora_ckpt`; their rank sets `lora_rank`)."""
        rank = lora_rank(adapters) if adapters is not None else None
        if rank is not None:
            if model_cfg.lora_rank not in (0, rank):
                raise CogvidError(
                    f"model.lora_ckpt={model_cfg.lora_ckpt} has adapters of rank {rank}, but "
                    f"model.lora_rank={model_cfg.lora_rank}: leave model.lora_rank unset (or set it to {rank})"
                )
            model_cfg = OmegaConf.merge(model_cfg, {"lora_rank": rank})
        model = cls.from_model_config(model_cfg)
        if dit_state is not None:
            log.debug("model.ckpt=%s: %s", model_cfg.ckpt, load_backbone_state(model.backbone, dit_state))
        if adapters is not None:
            load_lora_adapters(model.backbone, adapters)
            log.info("model.lora_ckpt=%s: %d adapter matrices of rank %d", model_cfg.lora_ckpt, len(adapters), rank)
        return model

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device
