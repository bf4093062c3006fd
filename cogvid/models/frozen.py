"""The frozen parts around the DiT, the VAE and T5, loaded from a composed config.

Neither is ever trained: both are loaded with requires_grad off and held apart from the DiT, as plain attributes
(`FrozenParts`), so a LightningModule neither registers, wraps, shards, saves nor optimizes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cogvid.models.t5 import T5Conditioner, load_text_encoder
from cogvid.models.vae import CausalVideoVAE
from cogvid.sat.checkpoint import load_sat_vae
from cogvid.utils.errors import CogvidError


def check_vae_file(path) -> None:
    """One line unless `model.vae_ckpt` names an existing file; nothing is loaded (callers check it before work)."""
    if not Path(str(path)).expanduser().is_file():
        raise CogvidError(
            f"model.vae_ckpt={path}: no such file; expected SAT's vae/3d-vae.pt "
            "(release layout: <variant>-sat/vae/3d-vae.pt)"
        )


def load_vae(cfg, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> CausalVideoVAE:
    """The VAE of a composed config: built from `model.vae`, SAT's `3d-vae.pt` at `model.vae_ckpt` strictly loaded,
    frozen, cast to `dtype` (None: as stored) and moved to `device` (None: the CPU)."""
    path = cfg.model.get("vae_ckpt")
    if not path:
        raise CogvidError("model.vae_ckpt is not set: give SAT's VAE, e.g. model.vae_ckpt=/weights/vae/3d-vae.pt")
    vae = load_sat_vae(path, CausalVideoVAE.from_config(cfg.model.vae), dtype=dtype).requires_grad_(False)
    return vae.to(device) if device is not None else vae


@dataclass
class FrozenParts:
    vae: CausalVideoVAE  # VAE layout (b, c, t, h, w), unscaled latents
    text_encoder: T5Conditioner

    def to(self, device: str | torch.device) -> FrozenParts:
        self.vae.to(device)
        self.text_encoder.to(device)
        return self


def load_frozen_parts(cfg, dtype: torch.dtype, device: str | torch.device = "cpu") -> FrozenParts:
    """The VAE and T5 of a composed config, both in `dtype` on `device`."""
    return FrozenParts(load_vae(cfg, dtype, device), load_text_encoder(cfg, dtype=dtype, device=device))
