"""Peak resident memory of `cogvid-export` on a random, real-size 5B checkpoint (bf16, ~11 GB).

    .venv/bin/python benchmarks/interop_memory.py [--dir /tmp/cogvid-bench] [--model 5b] [--keep]

1. writes a random SAT checkpoint with every tensor of `model=<model>` (bf16), tensor by tensor;
2. runs `task=to_diffusers parts=[transformer]` (safetensors, 5GB shards), then `task=to_sat` on the result,
   each in a fresh process that reports its own peak RSS (VmHWM);
3. checks a few tensors survived the round trip, prints the figures and deletes the files (unless --keep).
Needs about 3x the checkpoint size of free disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_common import memory_kib

GB = 1024**3


def peak_rss() -> dict[str, int]:
    """Peak and current resident memory of this process, in bytes."""
    return {k: v * 1024 for k, v in memory_kib("VmHWM", "VmRSS", "RssAnon", "RssFile").items()}


def child(argv: list[str]) -> None:
    """Run one export in this process, then print its peak RSS."""
    from cogvid.config.compose import compose
    from cogvid.interop.run import run_export

    run_export(compose(argv, config_name="export"))
    print("PEAK", " ".join(f"{k}={v}" for k, v in peak_rss().items()), flush=True)


def write_random_checkpoint(model: str, folder: Path) -> int:
    import torch

    from cogvid.config.compose import compose
    from cogvid.interop.transformer_map import sat_transformer_shapes
    from cogvid.sat.checkpoint import save_sat_checkpoint
    from cogvid.utils.lazy_tensors import TensorTarget

    cfg = compose([f"model={model}"]).model
    gen = torch.Generator().manual_seed(0)

    def random(shape):
        return lambda: torch.empty(shape, dtype=torch.bfloat16).normal_(generator=gen)

    targets = [TensorTarget(k, s, torch.bfloat16, random(s)) for k, s in sat_transformer_shapes(cfg).items()]
    save_sat_checkpoint(targets, folder, 1, desc="random checkpoint")
    return sum(t.nbytes for t in targets)


def run_child(overrides: list[str]) -> tuple[dict[str, int], float]:
    start = time.time()
    result = subprocess.run(
        [sys.executable, __file__, "--child", *overrides], capture_output=True, text=True, env={**os.environ}
    )
    if result.returncode:
        raise SystemExit(f"export failed:\n{result.stderr[-3000:]}")
    line = next(line for line in result.stdout.splitlines() if line.startswith("PEAK"))
    return {k: int(v) for k, v in (item.split("=") for item in line.split()[1:])}, time.time() - start


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp/cogvid-bench", type=Path)
    parser.add_argument("--model", default="5b")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work: Path = args.dir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        start = time.time()
        size = write_random_checkpoint(args.model, work / "sat" / "transformer")
        print(f"random {args.model} checkpoint: {size / GB:.2f} GiB bf16 in {time.time() - start:.0f} s")
        model = [f"model={args.model}"]
        export, t1 = run_child(
            ["task=to_diffusers", *model, f"model.ckpt={work / 'sat' / 'transformer'}", "parts=[transformer]"]
            + [f"out={work / 'diffusers'}"]
        )
        back, t2 = run_child(["task=to_sat", *model, f"source={work / 'diffusers'}", f"out={work / 'back'}"])
        for name, peak, seconds in (("SAT -> diffusers", export, t1), ("diffusers -> SAT", back, t2)):
            print(
                f"{name}: peak RSS {peak['VmHWM'] / GB:.2f} GiB "
                f"({peak['VmHWM'] / size:.1%} of the checkpoint) in {seconds:.0f} s"
            )
        import torch

        from cogvid.config.compose import compose
        from cogvid.interop.keymap import Side
        from cogvid.interop.transformer_map import transformer_key_map
        from cogvid.sat.checkpoint import read_sat_state_dict

        keymap = transformer_key_map(compose(model).model)
        original, _ = read_sat_state_dict(work / "sat" / "transformer")
        again, _ = read_sat_state_dict(work / "back" / "transformer")
        kept = [k for k in original if keymap.target_name(k, Side.sat)]  # the rest are rebuilt tables
        assert again.keys() == original.keys() and all(torch.equal(original[k], again[k]) for k in kept)
        print(f"round trip: {len(kept)} tensors bit-identical, {len(original) - len(kept)} rebuilt from the config")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
