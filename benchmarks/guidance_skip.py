"""Guidance passes: steps whose guidance scale is within 1e-4 of 1 run one conditional pass instead of two. How many
steps each guidance schedule saves, and the time with and without the skip, on the medium DiT of full_loop.py.

    .venv/bin/python benchmarks/guidance_skip.py                    # 50 steps, 1 round per setting
    .venv/bin/python benchmarks/guidance_skip.py --steps 20 --rounds 1

For each schedule (SAT's DynamicCFG, DynamicCFG with dynamic_schedule=corrected, constant guidance) the script
counts the skipped steps of the sampling plan, then times the sampling of one latent (13 x 30 x 44, the medium
random DiT: hidden 384, 4 layers) with the skip and with it switched off (SKIP_UNCOND_WITHIN = -1, every step two
passes), the two interleaved, and reports the medians and the largest latent difference. Writes JSON and a markdown
table to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_common import run_meta, write_results
from dit_forward import medium_config, random_weights

RESULTS = Path(__file__).parent / "results"
SCHEDULES = {
    "SAT's DynamicCFG": [],
    "DynamicCFG, corrected ramp": ["sampler.dynamic_schedule=corrected"],
    "constant": ["sampler.guider=constant"],
}


def main(argv: list[str] | None = None) -> int:
    from cogvid.config.compose import compose
    from cogvid.diffusion import guidance
    from cogvid.diffusion.model import DiffusionModel
    from cogvid.diffusion.sampling import sample_latents, sampling_plan

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--name", default="guidance_skip")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    model_cfg = medium_config("shapes", 384, 4, 49, 30, 44)
    model = DiffusionModel.from_model_config(model_cfg)
    model.backbone.eval()
    random_weights(model.backbone, seed=0)
    gen = torch.Generator().manual_seed(1)
    cond = torch.randn(1, model_cfg.text_length, model_cfg.text_hidden_size, generator=gen)
    noise = torch.randn(1, 13, 16, 30, 44, generator=gen)
    exact_within = guidance.SKIP_UNCOND_WITHIN

    rows = {}
    for name, overrides in SCHEDULES.items():
        sampler = compose(["model=shapes", f"sampler.num_steps={args.steps}", *overrides]).sampler
        skipped = sum(s is None for s in sampling_plan(sampler, model_cfg.shift_scale).scales)
        times, latents = {"skip": [], "no skip": []}, {}
        for r in range(args.rounds):
            for mode in ("skip", "no skip") if r % 2 == 0 else ("no skip", "skip"):
                guidance.SKIP_UNCOND_WITHIN = exact_within if mode == "skip" else -1.0
                start = time.perf_counter()
                latents[mode] = sample_latents(model, sampler, cond, noise=noise, generator=torch.Generator())
                times[mode].append(time.perf_counter() - start)
        guidance.SKIP_UNCOND_WITHIN = exact_within
        median = {k: statistics.median(v) for k, v in times.items()}
        rows[name] = {
            "skipped_steps": skipped,
            "median_s": median,
            "seconds": times,
            "skip_over_no_skip": median["skip"] / median["no skip"],
            "max_latent_difference": (latents["skip"] - latents["no skip"]).abs().max().item(),
        }
        print(f"{name}: {skipped} of {args.steps} steps skipped, {median['skip']:.1f} s vs {median['no skip']:.1f} s")

    meta = run_meta()
    table = "\n".join(
        [
            "# Guidance passes: one pass where the guidance scale is within 1e-4 of 1",
            "",
            f"- date: {meta['date']}",
            f"- device: {meta['device']}; torch {meta['torch']}",
            f"- command: `{meta['command']}`",
            f"- sampling of one 13 x 30 x 44 latent, medium random DiT (hidden 384, 4 layers), {args.steps} steps "
            "(dpmpp2m), medians of the rounds",
            "",
            "| guidance | steps with one pass | with the skip s | without s | ratio | largest latent difference |",
            "|---|---|---|---|---|---|",
            *(
                f"| {n} | {r['skipped_steps']} of {args.steps} | {r['median_s']['skip']:.1f} | "
                f"{r['median_s']['no skip']:.1f} | **{r['skip_over_no_skip']:.2f}** | "
                f"{r['max_latent_difference']:.1e} |"
                for n, r in rows.items()
            ),
        ]
    )
    print(table)
    write_results(RESULTS, args.name, {**meta, "steps": args.steps, "rows": rows}, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
