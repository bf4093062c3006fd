"""An exponential moving average of the trainable DiT weights (`train.ema_decay`), kept in fp32 beside them.

After every optimizer step: ema = decay * ema + (1 - decay) * weight, for the parameters the optimizer trains (for
LoRA: the adapters only). The average starts from the weights training starts from and has no warm-up: the first
update already uses `decay`, as SAT's FusedEmaAdam does (its `ema_decay`, applied inside the optimizer step). A
warm-up (decay growing with the step, as in some diffusion trainers) mostly matters for runs from random weights;
fine-tuning starts from trained weights, so the average starts from a good point.

Each process keeps the average of its own part of the weights (`local_part`): the whole tensor in a single process
or under DDP (every rank holds the same weights and the same average, saved once in the Lightning checkpoint), and
under DeepSpeed ZeRO-2/3 the rank's own fp32 master partition of it (what its optimizer steps), saved by every rank
into the checkpoint folder (`state.ckpt/ema/rank-00000.pt`). Whole weights are gathered only to write the SAT
export (`gather_whole`), one tensor at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

EMA_KEY = "ema"  # the entry of a Lightning checkpoint that holds the average
EMA_SHARDS = "ema"  # under DeepSpeed: the folder in state.ckpt/ holding one file of averages per rank


def shard_file(folder: Path, rank: int) -> Path:
    return folder / EMA_SHARDS / f"rank-{rank:05d}.pt"


@dataclass(frozen=True)
class LocalPart:
    """This process's part of one weight: `values` sit at [start, start + numel) of the flattened weight."""

    values: torch.Tensor
    start: int
    shape: torch.Size  # the whole weight's


def local_part(param: torch.nn.Parameter, rank: int) -> LocalPart:
    """The fp32 part of a trainable weight that this rank's optimizer steps: DeepSpeed's master partition under
    ZeRO-3 (`ds_tensor`: a padded slice of equal size on every rank) and its fragment under ZeRO-2 (`_hp_mapping`,
    None where this rank holds none of the weight), else the weight itself."""
    if hasattr(param, "ds_tensor"):
        from deepspeed.utils import safe_get_local_fp32_param

        values = safe_get_local_fp32_param(param)
        return LocalPart(values, rank * values.numel(), torch.Size(param.ds_shape))
    if hasattr(param, "_hp_mapping"):
        mapping = param._hp_mapping
        if mapping is None:
            return LocalPart(param.new_empty(0, dtype=torch.float32), 0, param.shape)
        return LocalPart(mapping.get_hp_fragment(), mapping.lp_fragment_address.start, param.shape)
    return LocalPart(param, 0, param.shape)


def gather_whole(values: torch.Tensor, start: int, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """The whole fp32 tensor from every rank's part (each rank passes its own; all get the result, on the CPU):
    zeros but for this rank's part, summed over the ranks, which is exact since the parts do not overlap. ZeRO-3's
    padding past the weight's end is dropped."""
    numel = shape.numel()
    whole = torch.zeros(numel, dtype=torch.float32, device=device)
    n = max(0, min(values.numel(), numel - start))
    whole[start : start + n] = values.detach().flatten()[:n].to(device)
    torch.distributed.all_reduce(whole)
    return whole.reshape(shape).cpu()


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
