"""Prompt adherence of the shapes model, measured from the pixels of the videos it makes.

    .venv/bin/python benchmarks/shapes_adherence.py                       # cogvid, the shipped model
    .venv/bin/python benchmarks/shapes_adherence.py --seeds 8 sampler=ddim sampler.num_steps=20
    .venv/bin/python benchmarks/shapes_adherence.py --diffusers outputs/shapes-diffusers   # an exported pipeline
    .venv/bin/python benchmarks/shapes_adherence.py --stage clips     # the generator's clips (the reader's check)
    .venv/bin/python benchmarks/shapes_adherence.py --stage vae       # those clips through the VAE, + its PSNR
    .venv/bin/python benchmarks/shapes_adherence.py --set cyan adapter=cyan  # the LoRA's word (also without it)

Prompts: the plain caption ("a red square moving up") of every held-out (colour, shape, direction) combination, and
of as many seen ones, drawn once from the training combinations with a fixed rng; each with `--seeds` seeds starting
at `--first-seed` (far from the seeds the recipe trains with). Every video is read by `cogvid.shapes.measure`:
colour, direction, shape, flicker and clutter (the share of background pixels away from the shape's box that differ
visibly from the background). The script prints the accuracy of each, for held-out and seen prompts apart, the
shape's balanced accuracy (the mean of the per-shape recalls: one blob for every prompt scores 33 %), and writes
JSON and a markdown table to benchmarks/results/ (device, torch version, command, date).

`--stage` picks where the videos come from: `samples` (the model, default), `clips` (the dataset generator's clips
of the same combinations, drawn with the same seeds) or `vae` (those clips through the model's VAE, encoded to the
posterior mean and decoded; PSNR overall and on the shape's pixels is added). `--set cyan` scores the reserved colour
cyan on every shape and direction instead (the LoRA's word: pass `adapter=cyan` to sample with its adapter).

Extra `key=value` arguments are cogvid-sample overrides (model=shapes is implied). With `--diffusers FOLDER` the
videos come from diffusers' CogVideoXPipeline loaded from FOLDER (`cogvid-export task=to_diffusers model=shapes
out=FOLDER`), with CogVideoXDDIMScheduler, constant guidance and the negative prompt "": the same videos (to float32
rounding, tests/test_shapes_interop.py) as cogvid with
`sampler=ddim sampler.zero_snr_rescale=full sampler.uncond=negative_prompt sampler.guider=constant` and the same
`sampler.num_steps` (= --steps, a divisor of 1000) and `sampler.guidance_scale` (= --guidance).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from bench_common import run_meta, write_results

from cogvid.shapes.dataset import (
    HELD_OUT,
    SHAPES,
    plain_caption,
    render_clip,
    reserved_combinations,
    sample_clip_spec,
    training_combinations,
)
from cogvid.shapes.measure import measure_video, parse_caption, score
from cogvid.shapes.recipe import DATA_PLACEMENT

RESULTS = Path(__file__).parent / "results"
ATTRIBUTES = ("colour", "direction", "shape", "all", "found")
SEEN_RNG = 20261201
CLIP_RNG = 0xC11


def prompt_sets(which: str = "base") -> dict[str, list[tuple[str, str, str]]]:
    """base: {"held_out": HELD_OUT, "seen": as many training combinations, drawn with a fixed rng};
    cyan: {"cyan": the reserved colour on every base shape and direction}."""
    if which == "cyan":
        return {"cyan": reserved_combinations(colour="cyan")}
    seen = training_combinations()
    picks = np.random.default_rng(SEEN_RNG).choice(len(seen), size=len(HELD_OUT), replace=False)
    return {"held_out": list(HELD_OUT), "seen": [seen[i] for i in sorted(picks)]}


def generator_clip(prompt: str, seed: int) -> np.ndarray:
    """(9, 64, 64, 3) uint8: the dataset generator's clip of the prompt's combination, drawn from this seed and laid
    out as the recipe lays out the DiT's clips (`DATA_PLACEMENT`)."""
    combination = parse_caption(prompt)
    rng = np.random.default_rng([CLIP_RNG, seed])
    return render_clip(sample_clip_spec(rng, [combination], placement=DATA_PLACEMENT))


class GeneratorClips:
    """The dataset generator's own clips (what the VAE and DiT are trained on)."""

    settings = {"source": "dataset generator"}

    def __call__(self, prompt: str, seed: int) -> np.ndarray:
        return generator_clip(prompt, seed)


class VaeReconstructions:
    """The generator's clips through the model's VAE: encoded to the posterior mean, decoded; PSNR kept per clip."""

    def __init__(self, overrides: list[str]):
        from cogvid.config.compose import compose
        from cogvid.sat.loading import load_vae

        cfg = compose(["model=shapes", *overrides])
        self.vae = load_vae(cfg.model, dtype=torch.float32)
        self.settings = {"source": "VAE reconstruction (posterior mean)", "vae_ckpt": str(cfg.model.vae_ckpt)}
        self.psnr: list[tuple[float, float]] = []

    @torch.no_grad()
    def __call__(self, prompt: str, seed: int) -> np.ndarray:
        from cogvid.training.vae_module import foreground_psnr_db, psnr_db
        from cogvid.utils.media import to_uint8_frames

        frames = generator_clip(prompt, seed)
        video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0  # (1, 3, F, H, W)
        back = self.vae.decode(self.vae.encode(video, sample=False)).clamp(-1, 1)
        self.psnr.append((float(psnr_db(video, back)[0]), float(foreground_psnr_db(video, back)[0])))
        return to_uint8_frames(back[0])


class CogvidVideos:
    """Videos from cogvid's pipeline (loaded once) for a composed sample config."""

    def __init__(self, overrides: list[str]):
        from cogvid.config.compose import compose
        from cogvid.inference.pipeline import VideoPipeline

        self.cfg = compose(["model=shapes", *overrides])
        self.pipeline = VideoPipeline.from_config(self.cfg)
        self.shape = self.pipeline.shape_for(None)
        self.settings = {
            "sampler": self.cfg.sampler.name if "name" in self.cfg.sampler else None,
            "num_steps": self.cfg.sampler.num_steps,
            "guidance_scale": self.cfg.sampler.guidance_scale,
        }

    def __call__(self, prompt: str, seed: int) -> np.ndarray:
        from cogvid.utils.media import to_uint8_frames

        result = self.pipeline.generate(prompt, seed=seed, shape=self.shape, progress=False)
        return to_uint8_frames(result.video)


@contextmanager
def exported_shapes_pipeline():
    """The shipped shapes model exported for diffusers (`cogvid-export task=to_diffusers`) into a temporary folder,
    whose path this yields; the folder goes when the block ends."""
    from cogvid.config.compose import compose
    from cogvid.interop.run import run_export

    with tempfile.TemporaryDirectory(prefix="cogvid-shapes-diffusers-") as tmp:
        run_export(compose(["task=to_diffusers", "model=shapes", f"out={tmp}/pipe"], config_name="export"))
        yield f"{tmp}/pipe"


DIFFUSERS_SCHEDULERS = {"ddim": "CogVideoXDDIMScheduler", "dpm": "CogVideoXDPMScheduler"}  # name -> diffusers class


class DiffusersVideos:
    """Videos from diffusers' CogVideoXPipeline, loaded from an exported folder, with one of its CogVideoX
    schedulers (`DIFFUSERS_SCHEDULERS`: ddim, the 2B's, or dpm, the 5B's; CogVideoXDPMScheduler draws fresh noise
    at every step)."""

    def __init__(self, folder: str, num_steps: int, guidance_scale: float, scheduler: str = "ddim"):
        import diffusers

        self.pipe = diffusers.CogVideoXPipeline.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        scheduler_class = getattr(diffusers, DIFFUSERS_SCHEDULERS[scheduler])
        self.pipe.scheduler = scheduler_class.from_config(self.pipe.scheduler.config)
        self.pipe.set_progress_bar_config(disable=True)
        self.num_steps, self.guidance_scale = num_steps, guidance_scale
        self.settings = {"sampler": f"diffusers-{scheduler}", "num_steps": num_steps, "guidance_scale": guidance_scale}

    def __call__(self, prompt: str, seed: int, num_steps: int | None = None) -> np.ndarray:
        """(f, h, w, 3) uint8; num_steps: this video's step count (default: the one given at construction)."""
        out = self.pipe(
            prompt=prompt,
            negative_prompt="",  # cogvid's sampler.uncond=negative_prompt with infer.negative_prompt's default
            num_frames=9,
            height=64,
            width=64,
            num_inference_steps=num_steps or self.num_steps,
            guidance_scale=self.guidance_scale,
            use_dynamic_cfg=False,  # sampler.guider=constant
            generator=torch.Generator().manual_seed(seed),  # the initial noise cogvid draws for infer.seed=seed
            output_type="np",
            max_sequence_length=self.pipe.transformer.config.max_text_seq_length,  # the 2B layout needs it exact
        )
        frames = np.asarray(out.frames[0])  # (f, h, w, 3) floats in [0, 1]
        return np.round(frames.clip(0, 1) * 255).astype(np.uint8)


def run(make_video, seeds: list[int], which: str = "base") -> dict:
    rows = []
    for split, combinations in prompt_sets(which).items():
        for combination in combinations:
            prompt = plain_caption(*combination)
            for seed in seeds:
                start = time.perf_counter()
                frames = make_video(prompt, seed)
                seconds = time.perf_counter() - start
                reading = measure_video(frames)
                rows.append(
                    {
                        "split": split,
                        "prompt": prompt,
                        "seed": seed,
                        "seconds": round(seconds, 3),
                        "expected_shape": combination[1],
                        "read": {"colour": reading.colour, "direction": reading.direction, "shape": reading.shape},
                        "flicker": reading.flicker,
                        "clutter": reading.clutter,
                        **score(reading, combination),
                    }
                )
                marks = "".join("+" if rows[-1][a] else "-" for a in ("colour", "direction", "shape"))
                print(f"{split:8s} {prompt:36s} seed {seed:5d}  {marks}  ({seconds:.1f} s)", flush=True)
    return {"rows": rows, "summary": summarise(rows)}


def balanced_shape_accuracy(rows: list[dict]) -> float:
    """The mean over the expected shapes of the share read as that shape (per-class recall), in %."""
    recalls = [
        np.mean([r["shape"] for r in rows if r["expected_shape"] == s])
        for s in SHAPES
        if any(r["expected_shape"] == s for r in rows)
    ]
    return round(100.0 * float(np.mean(recalls)), 1)


def summarise(rows: list[dict]) -> dict:
    summary = {}
    for split in dict.fromkeys(r["split"] for r in rows):
        mine = [r for r in rows if r["split"] == split]
        flicker = [r["flicker"] for r in mine if r["flicker"] is not None]
        summary[split] = {
            "videos": len(mine),
            **{a: round(100.0 * sum(r[a] for r in mine) / len(mine), 1) for a in ATTRIBUTES},
            "shape_balanced": balanced_shape_accuracy(mine),
            "flicker": round(float(np.mean(flicker)), 2) if flicker else None,
            "clutter": round(100.0 * float(np.mean([r["clutter"] for r in mine])), 2),
            "seconds_per_video": round(float(np.median([r["seconds"] for r in mine])), 3),
        }
    return summary


def markdown(summary: dict, meta: dict) -> str:
    lines = [
        f"# Shapes model prompt adherence ({meta['backend']})",
        "",
        f"- date: {meta['date']}",
        f"- device: {meta['device']}; torch {meta['torch']}",
        f"- command: `{meta['command']}`",
        f"- settings: {json.dumps(meta['settings'])}; seeds {meta['seeds'][0]}..{meta['seeds'][-1]}",
        *([f"- VAE PSNR: {meta['vae_psnr']}"] if "vae_psnr" in meta else []),
        "",
        "| prompts | videos | colour % | direction % | shape % | shape balanced % | all three % | object found % "
        "| flicker | clutter % | s/video |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for split, s in summary.items():
        lines.append(
            f"| {split.replace('_', '-')} | {s['videos']} | {s['colour']} | {s['direction']} | {s['shape']} | "
            f"{s['shape_balanced']} | {s['all']} | {s['found']} | {s['flicker']} | {s['clutter']} | "
            f"{s['seconds_per_video']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=4, help="seeds per prompt (default 4)")
    parser.add_argument("--first-seed", type=int, default=5000, help="the first seed (default 5000)")
    parser.add_argument("--diffusers", metavar="FOLDER", help="score diffusers' CogVideoXPipeline from this folder")
    parser.add_argument("--steps", type=int, default=50, help="--diffusers: inference steps (default 50)")
    parser.add_argument("--guidance", type=float, default=6.0, help="--diffusers: guidance scale (default 6)")
    parser.add_argument(
        "--stage", choices=("samples", "clips", "vae"), default="samples", help="where videos come from"
    )
    parser.add_argument("--set", dest="which", choices=("base", "cyan"), default="base", help="the prompts scored")
    parser.add_argument("--name", default=None, help="results file stem (default from the backend, stage and set)")
    parser.add_argument("overrides", nargs="*", help="cogvid-sample key=value overrides")
    args = parser.parse_args(argv)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    if args.diffusers:
        make_video, backend = DiffusersVideos(args.diffusers, args.steps, args.guidance), "diffusers"
    elif args.stage == "clips":
        make_video, backend = GeneratorClips(), "clips"
    elif args.stage == "vae":
        make_video, backend = VaeReconstructions(args.overrides), "vae"
    else:
        make_video, backend = CogvidVideos(args.overrides), "cogvid"
    result = run(make_video, seeds, args.which)
    meta = {
        "backend": backend,
        **run_meta(),
        "settings": {**make_video.settings, "overrides": args.overrides},
        "seeds": seeds,
    }
    if backend == "vae":
        overall, shape_pixels = np.asarray(make_video.psnr).mean(axis=0)
        meta["vae_psnr"] = f"{overall:.2f} dB overall, {shape_pixels:.2f} dB on the shape's pixels (mean of clips)"
    table = markdown(result["summary"], meta)
    print(table)
    default = "shapes_adherence" + ("_diffusers" if args.diffusers else "" if backend == "cogvid" else f"_{backend}")
    stem = args.name or default + ("" if args.which == "base" else f"_{args.which}")
    write_results(RESULTS, stem, {**meta, **result}, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
