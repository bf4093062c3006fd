"""What trains and how: SAT's trainable-parameter rule per mode, AdamW groups without decay for norms and biases,
and SAT's linear warm-up + linear decay schedule (SAT `disable_untrainable_params`, `configs/sft.yaml`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from cogvid.utils.errors import CogvidError

DEFAULT_LR = {"sft": 1e-5, "lora": 1e-3}  # SAT sft.yaml lr; its comment's LoRA range starts at 1e-3


def set_trainable(backbone: nn.Module, mode) -> list[str]:
    """Freeze what the mode does not train; return the names that train.

    mode=lora: only parameters whose name contains `matrix_A` / `matrix_B` (SAT not_trainable_prefixes ['all']).
    mode=sft: the whole DiT, or, when `mode.trainable_prefixes` is set, the parameters whose name starts with or
    contains one of them. Parameters created frozen (the 2B sin-cos table) stay frozen, as in SAT.
    """
    prefixes = list(mode.trainable_prefixes or [])
    if mode.name == "lora":
        if not any(".matrix_A." in n for n, _ in backbone.named_parameters()):
            raise CogvidError("mode=lora but the model has no LoRA adapters: set model.lora_rank > 0")
        prefixes = prefixes or ["matrix_A", "matrix_B"]
    trainable = []
    for name, p in backbone.named_parameters():
        wanted = not prefixes or any(name.startswith(x) or x in name for x in prefixes)
        p.requires_grad_(wanted and p.requires_grad)  # call once, on a freshly built model
        if p.requires_grad:
            trainable.append(name)
    if not trainable:
        raise CogvidError(f"mode={mode.name}: no parameter matches mode.trainable_prefixes={prefixes}")
    return trainable


def learning_rate(cfg) -> float:
    return float(cfg.train.lr) if cfg.train.lr is not None else DEFAULT_LR.get(cfg.mode.name, DEFAULT_LR["sft"])


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: with weight decay, and without for LayerNorm weights and
    every bias (SAT's grouping)."""
    decay, no_decay = [], []
    for _, sub in module.named_modules():
        for name, p in sub.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if isinstance(sub, (nn.LayerNorm, nn.GroupNorm)) or name == "bias":
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def warmup_steps(cfg) -> int:
    t = cfg.train
    return int(t.warmup_steps) if t.warmup_steps is not None else math.ceil(0.01 * t.max_steps)


def linear_schedule(max_steps: int, warmup: int):
    """LR factor for optimizer step s (0-based): (s + 1) / warmup during warm-up, then linearly down to 0 at
    max_steps (SAT AnnealingLR, decay style linear, lr_decay_iters = train_iters)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup))

    return factor


def build_optimizer(module: nn.Module, cfg, cpu_offload: bool = False) -> torch.optim.Optimizer:
    """AdamW (SAT's FusedEmaAdam without EMA); DeepSpeed's CPU Adam when the optimizer is offloaded."""
    t = cfg.train
    groups = param_groups(module, t.weight_decay)
    lr, betas = learning_rate(cfg), tuple(float(b) for b in t.betas)
    if cpu_offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=lr, betas=betas, eps=t.eps, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=t.eps)
