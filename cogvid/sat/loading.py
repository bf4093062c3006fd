"""The loaders: the weights of one CogVideoX variant from SAT's release layout, each part built from the composed
`model` group.

- `build_model`: the DiT and its denoiser, `model.ckpt` strictly loaded, then the adapters of `model.lora_ckpt`;
- `load_vae`: SAT's `vae/3d-vae.pt`, frozen;
- `load_text_encoder`: T5 from `model.text_encoder.path` (the release's `t5-v1_1-xxl` folder, a diffusers pipeline
  folder or a hub id), frozen;
- `load_frozen_parts`: the VAE and T5 that training holds beside the DiT (`FrozenParts`, a plain attribute that a
  LightningModule neither registers, wraps, shards, saves nor optimizes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cogvid.diffusion.model import DiffusionModel
from cogvid.models.lora import lora_rank
from cogvid.models.t5 import T5Conditioner
from cogvid.models.vae import CausalVideoVAE
from cogvid.sat.checkpoint import (
    load_backbone_state,
    load_lora_adapters,
    load_sat_vae,
    read_lora_adapters,
    read_sat_state_dict,
)
from cogvid.utils.errors import CogvidError

log = logging.getLogger(__name__)


def build_model(model_cfg) -> DiffusionModel:
    """The model of a composed `model` group, with `ckpt` strictly loaded when it is set, and then the adapters of
    `lora_ckpt` (a LoRA trained on that base; its rank sets `lora_rank`)."""
    lora_file = model_cfg.get("lora_ckpt")
    adapters = read_lora_adapters(lora_file) if lora_file else None
    if adapters is not None:
        model_cfg = _with_lora_rank(model_cfg, lora_rank(adapters), lora_file)
    model = DiffusionModel.from_model_config(model_cfg)
    if model_cfg.get("ckpt"):
        state, _ = read_sat_state_dict(model_cfg.ckpt)
        report = load_backbone_state(model.backbone, state)
        log.debug("model.ckpt=%s: %s", model_cfg.ckpt, report)
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


def check_vae_file(path) -> None:
    """One line unless `model.vae_ckpt` names an existing file; nothing is loaded (callers check it before work)."""
    if not Path(str(path)).expanduser().is_file():
        raise CogvidError(
            f"model.vae_ckpt={path}: no such file; expected SAT's vae/3d-vae.pt "
            "(release layout: <variant>-sat/vae/3d-vae.pt)"
        )


def load_vae(model_cfg, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> CausalVideoVAE:
    """The VAE of a composed `model` group: built from its `vae` sizes, SAT's `3d-vae.pt` at `vae_ckpt` strictly
    loaded, frozen, cast to `dtype` (None: as stored) and moved to `device` (None: the CPU)."""
    path = model_cfg.get("vae_ckpt")
    if not path:
        raise CogvidError("model.vae_ckpt is not set: give SAT's VAE, e.g. model.vae_ckpt=/weights/vae/3d-vae.pt")
    vae = load_sat_vae(path, CausalVideoVAE.from_config(model_cfg.vae), dtype=dtype).requires_grad_(False)
    return vae.to(device) if device is not None else vae


def load_text_encoder(
    model_cfg, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> T5Conditioner:
    """T5 of a composed `model` group: `text_encoder.path`, frozen, with the model's text_length as max_length."""
    path = model_cfg.text_encoder.get("path")
    if not path:
        raise CogvidError(
            "model.text_encoder.path is not set: give the T5 folder, e.g. model.text_encoder.path=/weights/t5-v1_1-xxl"
        )
    return T5Conditioner.from_pretrained(
        str(path), model_cfg.text_length, dtype=dtype, device=device, text_hidden_size=model_cfg.text_hidden_size
    )


@dataclass
class FrozenParts:
    vae: CausalVideoVAE  # VAE layout (b, c, t, h, w), unscaled latents
    text_encoder: T5Conditioner

    def to(self, device: str | torch.device) -> FrozenParts:
        self.vae.to(device)
        self.text_encoder.to(device)
        return self


def load_frozen_parts(model_cfg, dtype: torch.dtype, device: str | torch.device = "cpu") -> FrozenParts:
    """The VAE and T5 of a composed `model` group, both in `dtype` on `device`."""
    return FrozenParts(load_vae(model_cfg, dtype, device), load_text_encoder(model_cfg, dtype=dtype, device=device))
