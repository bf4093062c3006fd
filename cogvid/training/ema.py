"""An exponential moving average of the trainable DiT weights (`train.ema_decay`), kept in fp32 beside them.

After every optimizer step: ema = decay * ema + (1 - decay) * weight, for the parameters the optimizer trains (for
LoRA: the adapters only). The average starts from the weights training starts from and has no warm-up: the first
update already uses `decay`, as SAT's FusedEmaAdam does (its `ema_decay`, applied inside the optimizer step). A
warm-up (decay growing with the step, as in some diffusion trainers) mostly matters for runs from random weights;
fine-tuning starts from trained weights, so the average starts from a good point.

A single process, or every DDP rank (each holds the same weights and so the same average), keeps the whole average.
Under DeepSpeed the option is refused for now (`cogvid.training.plan`): each rank would have to average its own ZeRO
partition.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

EMA_KEY = "ema"  # the entry of a Lightning checkpoint that holds the average


class ParameterEma:
    """fp32 exponential moving averages of named tensors (the trainable weights, or this rank's parts of them)."""

    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.weights: dict[str, torch.Tensor] = {}  # name -> fp32 average, on the weight's device
        self.updates = 0  # optimizer steps averaged so far

    @torch.no_grad()
    def start(self, current: Mapping[str, torch.Tensor]) -> None:
        """Start the average at the current weights (fp32 copies)."""
        self.weights = {name: w.detach().to(torch.float32, copy=True) for name, w in current.items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, current: Mapping[str, torch.Tensor]) -> None:
        """ema = decay * ema + (1 - decay) * weight, for every averaged name (after an optimizer step)."""
        for name, ema in self.weights.items():
            ema.mul_(self.decay).add_(current[name].detach().to(torch.float32), alpha=1.0 - self.decay)
        self.updates += 1

    def state_dict(self) -> dict:
        """Tensors, numbers and strings only (a Lightning checkpoint is loaded with weights_only=True)."""
        return {"decay": self.decay, "updates": self.updates, "weights": dict(self.weights)}

    def load_state_dict(self, state: Mapping, device: torch.device | str | None = None) -> None:
        """Take the average (and its update count) of `state_dict()`; the decay stays this one's."""
        self.weights = {
            name: w.to(device=device if device is not None else w.device, dtype=torch.float32)
            for name, w in state["weights"].items()
        }
        self.updates = int(state["updates"])

    def to(self, device: torch.device | str) -> None:
        self.weights = {name: w.to(device) for name, w in self.weights.items()}
