"""LoRA as SAT's LoraMixin does it (sat/model/finetune/lora2.py).

A target Linear becomes `LoraLinear` with the frozen layer under `original` and one (A, B) pair per output
partition (3 for the fused query_key_value: Q, K, V; 1 for attention.dense), saved as `matrix_A.k` /
`matrix_B.k`. The branch is scaled by alpha / r.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn


class LoraLinear(nn.Module):
    """y = original(x) + cat_k[(x A_k^T) B_k^T] * alpha / r, the concatenation along output features."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, partitions: int):
        super().__init__()
        if out_features % partitions:
            raise ValueError(f"{out_features} output features do not split into {partitions} partitions")
        self.rank, self.alpha, self.partitions = rank, alpha, partitions
        self.scaling = alpha / rank
        self.original = nn.Linear(in_features, out_features)
        part = out_features // partitions
        self.matrix_A = nn.ParameterList([nn.Parameter(torch.empty(rank, in_features)) for _ in range(partitions)])
        self.matrix_B = nn.ParameterList([nn.Parameter(torch.zeros(part, rank)) for _ in range(partitions)])
        for a in self.matrix_A:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lora = [(x @ a.T @ b.T) * self.scaling for a, b in zip(self.matrix_A, self.matrix_B, strict=True)]
        return self.original(x) + torch.cat(lora, dim=-1)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W + cat_k(B_k A_k) * alpha / r, in float32 then cast back to the weight's dtype."""
        delta = torch.cat([b.float() @ a.float() for a, b in zip(self.matrix_A, self.matrix_B, strict=True)], dim=0)
        return (self.original.weight.float() + delta * self.scaling).to(self.original.weight.dtype)

    def merged(self) -> nn.Linear:
        """A plain Linear equal to this layer (up to rounding)."""
        linear = nn.Linear(
            self.original.in_features,
            self.original.out_features,
            device=self.original.weight.device,
            dtype=self.original.weight.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.merged_weight())
            linear.bias.copy_(self.original.bias)
        return linear


def linear_or_lora(in_features: int, out_features: int, rank: int, alpha: float, partitions: int) -> nn.Module:
    return (
        LoraLinear(in_features, out_features, rank, alpha, partitions)
        if rank > 0
        else nn.Linear(in_features, out_features)
    )


# State-dict names of a LoraLinear: `X.original.weight/bias` (the frozen layer), `X.matrix_A.k` / `X.matrix_B.k`.


def is_adapter(key: str) -> bool:
    """A LoRA matrix (`...matrix_A.k` / `...matrix_B.k`)."""
    return ".matrix_A." in key or ".matrix_B." in key


def is_lora_key(key: str) -> bool:
    """A tensor only a LoRA model has: an adapter matrix or a frozen layer under `.original.`."""
    return is_adapter(key) or ".original." in key


def lora_rank(state: Mapping[str, torch.Tensor]) -> int | None:
    """The rank of the adapters in a state dict (matrix_A is (rank, in_features)); None without adapters."""
    a = next((v for k, v in state.items() if ".matrix_A." in k), None)
    return None if a is None else int(a.shape[0])
