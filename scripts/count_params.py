"""Print a markdown table of the DiT size of each released variant: parameters and state-dict keys.

The models are built on the meta device, so this takes seconds and no memory. Parameters include the frozen
2B sin-cos table, the unused `transformer.position_embeddings` of the RoPE variants and the 5B-I2V learnable
table, as saved in SAT checkpoints; the v1.0 RoPE buffers count as keys, not parameters.

    python scripts/count_params.py
"""

from __future__ import annotations

import torch

import cogvid
from cogvid.models.dit import DiffusionTransformer

VARIANTS = ("2b", "5b", "5b_i2v", "1.5_5b", "1.5_5b_i2v")


def count(variant: str) -> tuple[int, int]:
    """(parameters, state-dict keys) of `model=<variant>`."""
    with torch.device("meta"):
        model = DiffusionTransformer(cogvid.compose([f"model={variant}"]).model)
    return sum(p.numel() for p in model.parameters()), len(model.state_dict())


def main() -> None:
    print("| variant | parameters | state-dict keys |")
    print("|---|---:|---:|")
    for variant in VARIANTS:
        n_params, n_keys = count(variant)
        print(f"| {variant} | {n_params:,} ({n_params / 1e9:.2f} B) | {n_keys} |")


if __name__ == "__main__":
    main()
