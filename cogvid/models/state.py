"""Putting a state dict into a network, strictly: every key, every shape, or one line that says what does not fit.

- `load_backbone_state`: a (prefix-stripped) SAT DiT state dict into the DiT, with SAT's routing of plain weights
  into LoRA layers (`LoraLinear._load_from_state_dict` in the original's `sat/model/finetune/lora2.py`);
- `load_lora_adapters`: adapter matrices alone, into a DiT whose base weights are loaded;
- `load_vae_state`: a VAE state dict (SAT's `3d-vae.pt` without `loss.*`) into the VAE.

The files themselves are read elsewhere (`cogvid.sat.checkpoint`); here only tensors meet modules.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from cogvid.models.lora import is_adapter, is_lora_key, lora_rank
from cogvid.utils.errors import CogvidError, first_few
from cogvid.utils.runtime import dtype_name

log = logging.getLogger(__name__)

_SHOW = 3  # keys listed per category in a load error


@dataclass(frozen=True)
class LoadReport:
    """What `load_backbone_state` did; a failed load raises instead."""

    loaded: int  # tensors copied into the model
    routed_to_original: int  # plain `X.weight/bias` loaded into a LoRA layer's `X.original.weight/bias`
    adapters_at_init: tuple[str, ...]  # LoRA matrices the checkpoint lacks, left at their init (B = 0)
    checkpoint_dtypes: tuple[str, ...]  # dtypes found in the checkpoint, converted to the model's on copy
    model_dtype: str

    def __str__(self) -> str:
        parts = [f"loaded {self.loaded} tensors ({'/'.join(self.checkpoint_dtypes)} -> {self.model_dtype})"]
        if self.routed_to_original:
            parts.append(f"{self.routed_to_original} plain weights routed into LoRA .original")
        if self.adapters_at_init:
            parts.append(f"{len(self.adapters_at_init)} LoRA adapter matrices left at init")
        return "; ".join(parts)


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def describe_key_mismatch(
    own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], allowed_missing=()
) -> str | None:
    """'N missing (...); N unexpected (...); N mis-shaped (...)' for a strict load, or None when the keys fit."""
    missing = [k for k in own if k not in state and k not in allowed_missing]
    unexpected = [k for k in state if k not in own]
    mis_shaped = [
        f"{k} checkpoint {_shape(v)} vs model {_shape(own[k])}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    problems = [
        f"{len(keys)} {what} ({first_few(keys, _SHOW)})"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped))
        if keys
    ]
    return "; ".join(problems) or None


def _route_into_lora(
    state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """(the checkpoint's tensors under the model's keys, its keys the model lacks, how many were routed): a key the
    model has is kept; `X.weight` / `X.bias` of a plain layer goes to the LoRA layer's `X.original.*`."""
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    routed = 0
    for key, value in state.items():
        if key in own:
            mapped[key] = value
            continue
        stem, _, leaf = key.rpartition(".")
        original = f"{stem}.original.{leaf}"
        if stem and original in own and original not in state:
            mapped[original] = value
            routed += 1
        else:
            unexpected.append(key)
    return mapped, unexpected, routed


def _mismatch_hint(model: nn.Module, ckpt_rank: int | None) -> str:
    """What to change when a checkpoint's keys do not fit `model`: the LoRA rank when only that differs, else the
    model."""
    model_rank = getattr(getattr(model, "cfg", None), "lora_rank", None)
    if ckpt_rank is not None and model_rank is not None and ckpt_rank != model_rank:
        return f"the checkpoint's LoRA rank is {ckpt_rank}: use model.lora_rank={ckpt_rank}"
    return "a checkpoint of another variant or size? pick the matching model=..."


def load_backbone_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None
) -> LoadReport:
    """Strict load of a (prefix-stripped) SAT DiT state dict into `model`, routing plain weights into LoRA.

    As SAT's `LoraLinear._load_from_state_dict`: a plain checkpoint's `X.weight/bias` goes into a LoRA layer's
    `X.original.weight/bias` and the adapters stay at init (reported). Any other missing, unexpected or
    mis-shaped key fails the whole load with one message. `dtype`: cast the model first (SAT casts to
    --bf16/--fp16 before loading); checkpoint tensors are converted to the model's dtype by the copy.
    """
    if dtype is not None:
        model.to(dtype)
    own = model.state_dict()
    model_has_lora = any(is_lora_key(k) for k in own)
    ckpt_rank = lora_rank(state)
    name = getattr(getattr(model, "cfg", None), "name", None)
    model_label = f"this model ({name})" if name else "this model"

    if ckpt_rank is not None and not model_has_lora:
        raise CogvidError(
            f"the checkpoint has LoRA adapters (rank {ckpt_rank}) but {model_label} has none: "
            f"use mode=lora model.lora_rank={ckpt_rank}"
        )

    mapped, unexpected, routed = _route_into_lora(state, own)
    missing = [k for k in own if k not in mapped]
    # A plain checkpoint into a LoRA model: the adapters it cannot have stay at their init, as in SAT.
    at_init = [k for k in missing if is_adapter(k)] if ckpt_rank is None and routed else []

    problems = describe_key_mismatch(own, {**mapped, **{k: state[k] for k in unexpected}}, allowed_missing=at_init)
    if problems:
        raise CogvidError(f"checkpoint does not fit {model_label}: {problems} ({_mismatch_hint(model, ckpt_rank)})")

    result = model.load_state_dict(mapped, strict=False)
    if result.unexpected_keys or set(result.missing_keys) != set(at_init):  # pragma: no cover - checked above
        raise CogvidError(f"load_state_dict disagreed with the key check: {result}")
    if at_init:
        log.warning(
            "plain checkpoint into a LoRA model: %d adapter matrices (matrix_A/matrix_B) left at init",
            len(at_init),
        )
    model_dtype = next((v.dtype for v in own.values() if v.is_floating_point()), None)
    return LoadReport(
        loaded=len(mapped),
        routed_to_original=routed,
        adapters_at_init=tuple(at_init),
        checkpoint_dtypes=tuple(sorted({dtype_name(v.dtype) for v in mapped.values()})),
        model_dtype=dtype_name(model_dtype),
    )


def load_lora_adapters(model: nn.Module, adapters: Mapping[str, torch.Tensor]) -> None:
    """Copy `adapters` into the LoRA layers of `model`: every adapter the model has, of the same shapes, and no
    other tensor (the base weights are loaded before, from `model.ckpt`)."""
    own = {k: v for k, v in model.state_dict().items() if is_adapter(k)}
    problems = describe_key_mismatch(own, adapters)
    if problems:
        raise CogvidError(f"the LoRA adapters do not fit this model: {problems} (a LoRA of another variant?)")
    with torch.no_grad():
        for key, value in adapters.items():
            own[key].copy_(value)


def load_vae_state(
    vae: nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike, dtype: torch.dtype | None = None
) -> nn.Module:
    """Strictly load the VAE tensors `state` (read from `source`, named in the error) into `vae`, in eval mode.

    Any missing, unexpected or mis-shaped key fails the load with one line. `dtype`: cast the model first (SAT runs
    the VAE in the model dtype); the checkpoint's tensors are converted by the copy.
    """
    if dtype is not None:
        vae.to(dtype)
    problems = describe_key_mismatch(vae.state_dict(), state)
    if problems:
        raise CogvidError(
            f"{source} does not fit the VAE: {problems} (not a CogVideoX 3d-vae.pt, or another VAE size?)"
        )
    vae.load_state_dict(state, strict=True)
    return vae.eval()
