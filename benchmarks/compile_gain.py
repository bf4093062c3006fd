"""compile=true against the eager DiT: the forward time of each, and what the compilation costs cold and from the cache.

    .venv/bin/python benchmarks/compile_gain.py                   # medium 2B-style and 5B-style DiTs, 5 rounds
    .venv/bin/python benchmarks/compile_gain.py --models 5b --rounds 3

For each layout the script runs two fresh processes that share one empty inductor cache folder: the first compiles
from nothing (cold), the second finds the first's work in the cache (warm). Each reports the seconds of its first
compiled call (compilation included), then times eager and compiled forwards interleaved (`--rounds`, after one
warm-up each) and reports the medians and the largest difference between the two outputs. The DiT is the medium
config of benchmarks/dit_forward.py (hidden 384, 4 layers, latent 13 x 30 x 44, batch 2) with random weights;
`cogvid.inference.pipeline.compile_blocks` compiles it as compile=true does. Writes JSON and a markdown table to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_common import report, run_child, run_meta, write_results

RESULTS = Path(__file__).parent / "results"


def child(model: str, rounds: int) -> dict:
    import torch
    from dit_forward import inputs, medium_config, random_weights

    from cogvid.inference.pipeline import compile_blocks
    from cogvid.models.dit import DiffusionTransformer

    torch.set_grad_enabled(False)
    cfg = medium_config(model, 384, 4, 49, 30, 44)
    torch.manual_seed(0)
    eager = DiffusionTransformer(cfg).eval()
    random_weights(eager, seed=0)
    compiled = DiffusionTransformer(cfg).eval()
    compiled.load_state_dict(eager.state_dict())
    compile_blocks(compiled)
    x, timesteps, context = inputs(cfg, 2)

    start = time.perf_counter()
    out_compiled = compiled(x, timesteps, context)
    first_call = time.perf_counter() - start
    out_eager = eager(x, timesteps, context)
    times = {"eager": [], "compiled": []}
    for r in range(rounds):
        for name in ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager"):
            start = time.perf_counter()
            (eager if name == "eager" else compiled)(x, timesteps, context)
            times[name].append(time.perf_counter() - start)
    return {
        "first_call_s": first_call,
        "seconds": times,
        "max_abs_difference": (out_compiled - out_eager).abs().max().item(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["shapes", "5b"], help="layouts (default: shapes 5b)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--name", default="compile_gain", help="results file stem (default compile_gain)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        report(child(args.child, args.rounds))
        return 0

    rows = {}
    for model in args.models:
        with tempfile.TemporaryDirectory(prefix="cogvid-inductor-") as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            runs = {}
            for run in ("cold", "warm"):
                cmd = [sys.executable, __file__, "--child", model, "--rounds", str(args.rounds)]
                runs[run] = run_child(cmd, f"{model} {run}", env=env, cwd=Path(__file__).parent)
                if runs[run] is None:
                    return 1
                print(f"{model} {run}: first call {runs[run]['first_call_s']:.1f} s", flush=True)
        seconds = {k: runs["cold"]["seconds"][k] + runs["warm"]["seconds"][k] for k in ("eager", "compiled")}
        median = {k: statistics.median(v) for k, v in seconds.items()}
        rows[model] = {
            "cold_first_call_s": runs["cold"]["first_call_s"],
            "warm_first_call_s": runs["warm"]["first_call_s"],
            "seconds": seconds,
            "median_s": median,
            "compiled_over_eager": median["compiled"] / median["eager"],
            "max_abs_difference": max(r["max_abs_difference"] for r in runs.values()),
        }

    meta = {**run_meta(), "config": {"hidden_size": 384, "num_layers": 4, "latent": [13, 30, 44], "batch": 2}}
    table = "\n".join(
        [
            "# compile=true: the compiled DiT against the eager one",
            "",
            f"- date: {meta['date']}",
            f"- device: {meta['device']}; torch {meta['torch']}",
            f"- command: `{meta['command']}`",
            f"- config: medium DiT {json.dumps(meta['config'])}, random weights; every block torch.compile'd",
            "",
            "| layout | eager s | compiled s | compiled / eager | first call, cold cache s | first call, warm cache s "
            "| largest difference |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {m} | {r['median_s']['eager']:.3f} | {r['median_s']['compiled']:.3f} | "
                f"**{r['compiled_over_eager']:.2f}** | {r['cold_first_call_s']:.1f} | {r['warm_first_call_s']:.1f} | "
                f"{r['max_abs_difference']:.1e} |"
                for m, r in rows.items()
            ),
        ]
    )
    print(table)
    write_results(RESULTS, args.name, {**meta, "rows": rows}, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
