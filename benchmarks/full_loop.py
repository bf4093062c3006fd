"""The whole sampling loop (T5, 50 guided steps, VAE decode): cogvid's pipeline against diffusers' CogVideoXPipeline
on the same exported weights, with the scheduler settings that give the same latents.

    .venv/bin/python benchmarks/full_loop.py                     # medium DiT, 49 frames at 240 x 352, 50 steps
    .venv/bin/python benchmarks/full_loop.py --steps 10 --layers 2 --rounds 1

The model is the shapes model's layout (2B-style: sin-cos positions, no qk-norm) with a medium DiT of random weights
(hidden 384, 4 layers, seed 0), and the shipped shapes VAE and small T5: a config where the DiT dominates. The DiT is
saved as a SAT checkpoint, and the shapes model's parts are exported with `cogvid-export task=to_diffusers`.
cogvid runs `sampler=ddim sampler.zero_snr_rescale=full sampler.uncond=negative_prompt sampler.guider=constant`.
diffusers runs CogVideoXDDIMScheduler, constant guidance and the negative prompt "". Each contender runs in a fresh
process, `--rounds` videos after one warm-up video, and reports the median seconds per video and its peak RSS
(VmHWM). The parent compares the two videos (PSNR) and writes JSON and a markdown table to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_common import memory_kib, psnr, report, run_child, run_meta, write_results

RESULTS = Path(__file__).parent / "results"
PROMPT = "a red circle moving right"


def model_overrides(args) -> list[str]:
    heads = args.hidden // 64
    return [
        "model=shapes",
        f"model.hidden_size={args.hidden}",
        f"model.num_layers={args.layers}",
        f"model.num_attention_heads={heads}",
        f"model.num_frames={args.frames}",
        f"model.latent_height={args.size[0] // 8}",
        f"model.latent_width={args.size[1] // 8}",
    ]


def prepare(args, work: Path) -> tuple[Path, Path]:
    """A SAT checkpoint of the medium random DiT, and the diffusers folder exported from it."""
    import torch

    from cogvid.config.compose import compose
    from cogvid.interop.run import run_export
    from cogvid.models.dit import DiffusionTransformer
    from cogvid.sat.checkpoint import save_sat_checkpoint

    cfg = compose(model_overrides(args))
    torch.manual_seed(0)
    dit = DiffusionTransformer(cfg.model).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in dit.named_parameters():
            if param.requires_grad:
                scale = param[0].numel() ** -0.5 if param.ndim >= 2 else 0.1
                param.copy_(torch.randn(param.shape, generator=gen) * scale + (param.ndim == 1 and "bias" not in name))
    ckpt = work / "transformer"
    save_sat_checkpoint(dit, ckpt, 1)
    out = work / "diffusers"
    export = ["task=to_diffusers", *model_overrides(args), f"model.ckpt={ckpt}", f"out={out}", "dtype=fp32"]
    run_export(compose(export, config_name="export"))
    return ckpt, out


def child(name: str, args) -> None:
    """Make `rounds` + 1 videos; print one JSON line: seconds per video (after the first), peak RSS."""
    import torch

    frames_out = Path(args.work) / f"{name}.npy"
    if name == "cogvid":
        from cogvid.config.compose import compose
        from cogvid.inference.pipeline import VideoPipeline
        from cogvid.utils.media import to_uint8_frames

        sampler = ["sampler=ddim", "sampler.zero_snr_rescale=full", "sampler.uncond=negative_prompt"]
        sampler += ["sampler.guider=constant", f"sampler.num_steps={args.steps}", "sampler.guidance_scale=6"]
        size = [f"infer.num_frames={args.frames}", f"infer.height={args.size[0]}", f"infer.width={args.size[1]}"]
        cfg = compose([*model_overrides(args), f"model.ckpt={args.ckpt}", *sampler, *size, "device=cpu"])
        pipeline = VideoPipeline.from_config(cfg)
        shape = pipeline.shape_for(None)

        def video():
            return to_uint8_frames(pipeline.generate(PROMPT, seed=42, negative_prompt="", shape=shape).video)
    else:
        from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline

        pipe = CogVideoXPipeline.from_pretrained(args.diffusers, local_files_only=True, dtype=torch.float32)
        pipe.scheduler = CogVideoXDDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)

        def video():
            out = pipe(
                prompt=PROMPT,
                negative_prompt="",
                num_frames=args.frames,
                height=args.size[0],
                width=args.size[1],
                num_inference_steps=args.steps,
                guidance_scale=6.0,
                use_dynamic_cfg=False,
                generator=torch.Generator().manual_seed(42),
                output_type="np",
                max_sequence_length=pipe.transformer.config.max_text_seq_length,
            )
            return np.round(np.asarray(out.frames[0]).clip(0, 1) * 255).astype(np.uint8)

    frames = video()  # warm-up
    seconds = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        frames = video()
        seconds.append(time.perf_counter() - start)
    np.save(frames_out, frames)
    peak = round(memory_kib("VmHWM")["VmHWM"] / 1024)
    report({"name": name, "seconds": seconds, "peak_rss_mib": peak})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--size", type=int, nargs=2, default=[240, 352], metavar=("H", "W"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="full_loop", help="results file stem (default full_loop)")
    parser.add_argument("--child", choices=("cogvid", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--diffusers", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args)
        return 0
    with tempfile.TemporaryDirectory(prefix="cogvid-full-loop-") as tmp:
        work = Path(tmp)
        ckpt, folder = prepare(args, work)
        rows = {}
        shared = ["--hidden", str(args.hidden), "--layers", str(args.layers), "--frames", str(args.frames)]
        shared += ["--size", *map(str, args.size), "--steps", str(args.steps), "--rounds", str(args.rounds)]
        shared += ["--work", str(work), "--ckpt", str(ckpt), "--diffusers", str(folder)]
        for name in ("cogvid", "diffusers"):
            rows[name] = run_child([sys.executable, __file__, "--child", name, *shared], name)
            if rows[name] is None:
                return 1
            print(f"{name}: {rows[name]}", flush=True)
        similarity = psnr(*(np.load(work / f"{n}.npy") for n in ("cogvid", "diffusers")))

    median = {n: statistics.median(r["seconds"]) for n, r in rows.items()}
    ratios = {
        "seconds": round(median["cogvid"] / median["diffusers"], 2),
        "peak_rss": round(rows["cogvid"]["peak_rss_mib"] / rows["diffusers"]["peak_rss_mib"], 2),
    }
    meta = {
        **run_meta(),
        "config": {"hidden": args.hidden, "layers": args.layers, "frames": args.frames, "size": args.size},
        "steps": args.steps,
    }
    table = "\n".join(
        [
            "# Full sampling loop: cogvid against diffusers' CogVideoXPipeline on the same weights",
            "",
            f"- date: {meta['date']}",
            f"- device: {meta['device']}; torch {meta['torch']}",
            f"- command: `{meta['command']}`",
            f"- model: shapes layout, medium DiT {json.dumps(meta['config'])}, {args.steps} guided DDIM steps",
            f"- PSNR of cogvid's video against diffusers': {similarity:.1f} dB",
            "",
            "| | median s per video | rounds | peak RSS (MiB) |",
            "|---|---|---|---|",
            *(
                f"| {n} | {median[n]:.2f} | {', '.join(f'{s:.2f}' for s in r['seconds'])} | {r['peak_rss_mib']} |"
                for n, r in rows.items()
            ),
            "",
            f"cogvid / diffusers: time **{ratios['seconds']}**, peak RSS **{ratios['peak_rss']}**",
        ]
    )
    print(table)
    payload = {**meta, "rows": rows, "median_s": median, "ratios": ratios, "psnr_db": similarity}
    write_results(RESULTS, args.name, payload, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
