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
    def from_model_config(cls, model_cfg, adapters=None) -> DiffusionModel:
        """A freshly initialised model (no weights loaded): the noise schedule, then the network, its LoRA layers of
        the rank of `adapters` when given (`_adapter_config`)."""
        denoiser = DiscreteDenoiser(model_cfg.shift_scale)
        if adapters is not None:
            model_cfg = _adapter_config(model_cfg, adapters)
        return cls(model_cfg, DiffusionTransformer(model_cfg), denoiser)

    @classmethod
    def from_weights(cls, model_cfg, dit_state=None, adapters=None) -> DiffusionModel:
        """The model with the DiT tensors `dit_state` (read from `model_cfg.ckpt`) strictly loaded, and then the
        LoRA `adapters` (read from `model_cfg.lora_ckpt`; their rank sets `lora_rank`)."""
        model = cls.from_model_config(model_cfg, adapters)
        if dit_state is not None:
            log.debug("model.ckpt=%s: %s", model.cfg.ckpt, load_backbone_state(model.backbone, dit_state))
        if adapters is not None:
            load_lora_adapters(model.backbone, adapters)
            log.info(
                "model.lora_ckpt=%s: %d adapter matrices of rank %d",
                model.cfg.lora_ckpt,
                len(adapters),
                model.cfg.lora_rank,
            )
        return model

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device


def _adapter_config(model_cfg, adapters) -> DictConfig:
    """`model_cfg` with `lora_rank` set to the rank of `adapters` (read from `model_cfg.lora_ckpt`), or one line when
    model.lora_rank names another."""
    rank = lora_rank(adapters)
    if rank is None:
        return model_cfg
    if model_cfg.lora_rank not in (0, rank):
        raise CogvidError(
            f"model.lora_ckpt={model_cfg.lora_ckpt} has adapters of rank {rank}, but "
            f"model.lora_rank={model_cfg.lora_rank}: leave model.lora_rank unset (or set it to {rank})"
        )
    return OmegaConf.merge(model_cfg, {"lora_rank": rank})
