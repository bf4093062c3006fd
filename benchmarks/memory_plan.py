"""What cogvid's memory estimate (cogvid.inference.memory) plans for the released variants at their real sizes on a
GPU, without loading anything: each phase's bytes, the peak, and the decode tile `infer.vae_tile=auto` picks under
a budget.

    .venv/bin/python benchmarks/memory_plan.py                          # bf16, budgets of 80, 24 and 10 GB
    .venv/bin/python benchmarks/memory_plan.py --dtype fp16 --budgets 16

T5 is T5-v1.1-XXL's config (the release's text encoder). These are estimates: the activation widths are fitted to
measured CPU peaks (tests/test_memory_estimate.py); CUDA's caching allocator usually needs less. Writes JSON and a
markdown table to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from bench_common import run_meta, write_results

RESULTS = Path(__file__).parent / "results"
T5_XXL = {"d_model": 4096, "d_ff": 10240, "num_layers": 24, "num_heads": 64, "d_kv": 64, "vocab_size": 32128}
T5_XXL |= {"feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def plan(variant: str, dtype: torch.dtype, budgets: list[float]) -> dict:
    from cogvid.config.compose import compose
    from cogvid.inference import memory
    from cogvid.inference.video_shape import video_shape
    from cogvid.models.t5 import t5_weight_bytes
    from cogvid.utils.errors import CogvidError

    cfg = compose([f"model={variant}", "model.text_encoder.path=null"])
    shape = video_shape(cfg.model, None, None, None)
    e = memory.estimate(cfg, shape, dtype, dtype)
    text_weights = t5_weight_bytes(T5_XXL, dtype)
    text_phase = text_weights + e.text_activations
    row = {
        "shape": [shape.num_frames, shape.height, shape.width],
        "t5_gb": text_phase / memory.GB,
        "weights_gb": e.weights / memory.GB,
        "sampling_gb": e.sampling / memory.GB,
        "decode_gb": e.decoding / memory.GB,
        "peak_gb": max(text_phase, e.video_phase) / memory.GB,
        "budgets": {},
    }
    for budget in budgets:
        room = int(budget * memory.GB) - e.weights
        if max(text_phase, e.weights + e.sampling) > budget * memory.GB:
            row["budgets"][str(budget)] = "refused"
            continue
        try:
            tile = memory.decode_tile(cfg.model, shape, dtype, room)
        except CogvidError:
            row["budgets"][str(budget)] = "refused (decode)"
            continue
        row["budgets"][str(budget)] = "whole frames" if tile is None else f"tiles {list(tile)}"
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["2b", "5b", "1.5_5b"])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--budgets", nargs="+", type=float, default=[80, 24, 10], help="GB")
    parser.add_argument("--name", default="memory_plan")
    args = parser.parse_args(argv)
    rows = {v: plan(v, DTYPES[args.dtype], args.budgets) for v in args.variants}
    meta = run_meta()
    budget_cols = " | ".join(f"decode at {b:g} GB" for b in args.budgets)
    table = "\n".join(
        [
            f"# Memory plan of the released variants ({args.dtype}, estimated, on a GPU)",
            "",
            f"- date: {meta['date']}; torch {meta['torch']}",
            f"- command: `{meta['command']}`",
            "- T5 phase: T5-XXL weights and activations (T5 is freed before the DiT moves to the GPU); video phase: "
            "DiT + VAE weights + the larger of one guided DiT call and one decoder call",
            "",
            f"| variant | frames x H x W | T5 phase GB | DiT + VAE weights GB | DiT call GB | whole-frame decode GB "
            f"| peak GB | {budget_cols} |",
            "|---|---|---|---|---|---|---|" + "---|" * len(args.budgets),
            *(
                f"| {v} | {' x '.join(map(str, r['shape']))} | {r['t5_gb']:.1f} | {r['weights_gb']:.1f} | "
                f"{r['sampling_gb']:.1f} | {r['decode_gb']:.1f} | {r['peak_gb']:.1f} | "
                + " | ".join(r["budgets"][str(b)] for b in args.budgets)
                + " |"
                for v, r in rows.items()
            ),
        ]
    )
    print(table)
    write_results(RESULTS, args.name, {**meta, "dtype": args.dtype, "rows": rows}, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
