"""The loaders: the weights of one CogVideoX variant from SAT's release layout, each part built from the composed
`model` group. Every weight file is read (and checked) first, `read_weight_files`; then each network is built from
its tensors.

- `build_model`: the DiT and its denoiser, `model.ckpt` strictly loaded, then the adapters of `model.lora_ckpt`
  (`DiffusionModel.from_weights`);
- `load_vae`: SAT's `vae/3d-vae.pt`, frozen (`CausalVideoVAE.from_state`);
- T5 loads from its own folder: `T5Conditioner.from_model_config`;
- `load_frozen_parts`: the VAE and T5 that training holds beside the DiT (`FrozenParts`, a plain attribute that a
  LightningModule neither registers, wraps, shards, saves nor optimizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cogvid.diffusion.model import DiffusionModel
from cogvid.models.t5 import T5Conditioner
from cogvid.models.vae import CausalVideoVAE
from cogvid.sat.checkpoint import read_lora_adapters, read_sat_files, read_sat_state_dict, read_sat_vae_state_dict
from cogvid.utils.errors import CogvidError


@dataclass(frozen=True)
class WeightFiles:
    """The tensors of a `model` group's weight files, read before any network is built (None: not read)."""

    dit: dict[str, torch.Tensor] | None = None  # model.ckpt, the DiT's keys (None too when model.ckpt is unset)
    adapters: dict[str, torch.Tensor] | None = None  # model.lora_ckpt's adapter matrices
    vae: dict[str, torch.Tensor] | None = None  # model.vae_ckpt


def read_dit_files(model_cfg) -> WeightFiles:
    """Read the DiT's files of a `model` group: `ckpt` and `lora_ckpt`, each when set."""
    ckpt, lora_file = model_cfg.get("ckpt"), model_cfg.get("lora_ckpt")
    return WeightFiles(
        dit=read_sat_state_dict(ckpt)[0] if ckpt else None,
        adapters=read_lora_adapters(lora_file) if lora_file else None,
    )


def read_vae_file(model_cfg) -> dict[str, torch.Tensor]:
    """Read the VAE's file of a `model` group, `vae_ckpt` (which must be set)."""
    _check_vae_set(model_cfg)
    return read_sat_vae_state_dict(model_cfg.vae_ckpt)


def _check_vae_set(model_cfg) -> None:
    if not model_cfg.get("vae_ckpt"):
        raise CogvidError("model.vae_ckpt is not set: give SAT's VAE, e.g. model.vae_ckpt=/weights/vae/3d-vae.pt")


def read_weight_files(model_cfg) -> WeightFiles:
    """Every weight file of a `model` group, the DiT's (`ckpt`, `lora_ckpt`, each when set) and the VAE's (`vae_ckpt`,
    which must be set), read together (`read_sat_files`)."""
    _check_vae_set(model_cfg)
    return WeightFiles(*read_sat_files(model_cfg.get("ckpt"), model_cfg.get("lora_ckpt"), model_cfg.vae_ckpt))


def build_model(model_cfg) -> DiffusionModel:
    """The model of a composed `model` group, with `ckpt` strictly loaded when it is set, and then the adapters of
    `lora_ckpt` (a LoRA trained on that base; its rank sets `lora_rank`)."""
    files = read_dit_files(model_cfg)
    return DiffusionModel.from_weights(model_cfg, files.dit, files.adapters)


def load_vae(model_cfg, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> CausalVideoVAE:
    """The VAE of a composed `model` group: built from its `vae` sizes, SAT's `3d-vae.pt` at `vae_ckpt` strictly
    loaded, frozen, cast to `dtype` (None: as stored) and moved to `device` (None: the CPU)."""
    state = read_vae_file(model_cfg)  # read and checked before the network is built
    vae = CausalVideoVAE.from_state(model_cfg.vae, state, model_cfg.vae_ckpt, dtype)
    return vae.to(device) if device is not None else vae


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
    return FrozenParts(
        load_vae(model_cfg, dtype, device), T5Conditioner.from_model_config(model_cfg, dtype=dtype, device=device)
    )
