"""The shapes model's cyan LoRA outside cogvid: exported with `cogvid-export task=lora_to_diffusers`, loaded with
diffusers' `load_lora_weights` on the exported base, against cogvid with the adapter (`adapter=cyan`).

    .venv/bin/python benchmarks/shapes_lora_parity.py            # 12 cyan prompts, 50 DDIM steps, seed 5000
    .venv/bin/python benchmarks/shapes_lora_parity.py --steps 20

Both sides run the diffusers-parity settings (DDIM, zero-SNR rescale, negative prompt "", constant guidance 6); the
script prints each prompt's PSNR (pixels in [0, 1]) and the minimum and median, and writes them to
benchmarks/results/shapes_lora_parity.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_common import run_meta, write_results

from cogvid.config.compose import compose
from cogvid.inference.pipeline import VideoPipeline
from cogvid.interop.run import run_export
from cogvid.shapes.dataset import plain_caption, reserved_combinations

RESULTS = Path(__file__).parent / "results"
PARITY = ["sampler=ddim", "sampler.zero_snr_rescale=full", "sampler.uncond=negative_prompt", "sampler.guider=constant"]
GUIDANCE = 6.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="inference steps, a divisor of 1000 (default 50)")
    parser.add_argument("--seed", type=int, default=5000)
    args = parser.parse_args(argv)
    import diffusers

    cfg = compose(["model=shapes", "adapter=cyan", *PARITY, f"sampler.num_steps={args.steps}", "device=cpu"])
    ours = VideoPipeline.from_config(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        base, lora = Path(tmp) / "base", Path(tmp) / "lora"
        run_export(compose(["model=shapes", "task=to_diffusers", f"out={base}"], "export"))
        alpha = f"model.lora_alpha={cfg.model.lora_alpha}"
        run_export(
            compose(
                ["model=shapes", alpha, f"lora={cfg.model.lora_ckpt}", "task=lora_to_diffusers", f"out={lora}"],
                "export",
            )
        )
        pipe = diffusers.CogVideoXPipeline.from_pretrained(base, local_files_only=True, dtype=torch.float32)
        pipe.scheduler = diffusers.CogVideoXDDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(lora)
        rows = []
        for combination in reserved_combinations(colour="cyan"):
            prompt = plain_caption(*combination)
            theirs = pipe(
                prompt=prompt,
                negative_prompt="",
                num_inference_steps=args.steps,
                guidance_scale=GUIDANCE,
                use_dynamic_cfg=False,
                max_sequence_length=16,
                generator=torch.Generator().manual_seed(args.seed),
                output_type="pt",
            ).frames[0]
            video = ours.generate(prompt, seed=args.seed, negative_prompt="", progress=False).video
            mine = (video / 2 + 0.5).clamp(0, 1).permute(1, 0, 2, 3)
            psnr = float(10 * torch.log10(1.0 / (theirs - mine).pow(2).mean().clamp_min(1e-12)))
            rows.append({"prompt": prompt, "psnr_db": round(psnr, 2)})
            print(f"{prompt:36s} {psnr:6.2f} dB", flush=True)
    values = [r["psnr_db"] for r in rows]
    summary = {"min_db": min(values), "median_db": float(np.median(values)), "videos": len(values)}
    meta = {**run_meta(), "steps": args.steps, "seed": args.seed, "guidance": GUIDANCE}
    table = (
        "# The cyan LoRA in diffusers against cogvid\n\n"
        f"- date: {meta['date']}; device: {meta['device']}; torch {meta['torch']}\n"
        f"- command: `{meta['command']}`\n\n"
        "| videos | PSNR min | PSNR median |\n|---|---|---|\n"
        f"| {summary['videos']} | {summary['min_db']:.2f} dB | {summary['median_db']:.2f} dB |\n"
    )
    print(table)
    write_results(RESULTS, "shapes_lora_parity", {**meta, "summary": summary, "rows": rows}, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
