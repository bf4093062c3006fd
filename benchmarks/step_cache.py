"""The step cache (`sampler.cache=THRESHOLD`) on the shapes model: speed against quality, per threshold.

    .venv/bin/python benchmarks/step_cache.py                              # thresholds 0 (exact) .. 0.8
    .venv/bin/python benchmarks/step_cache.py --thresholds 0 0.3 --seeds 1

The default sampler (dpmpp2m, 50 steps) runs every prompt of benchmarks/shapes_adherence.py (held-out and seen) with
`--seeds` seeds at each threshold; the pipeline loads once. Threshold 0 is the exact path (the cache never reuses).
For each threshold the script records:
- seconds per video (median) and the speed-up over the exact path;
- the share of DiT calls that reused the cached blocks;
- PSNR and SSIM of the decoded video against the exact path's video of the same prompt and seed;
- adherence (colour, direction, shape read from the pixels, and their mean).
In the same run, diffusers' CogVideoXPipeline makes the same videos from the shapes model exported with
`cogvid-export task=to_diffusers` (its DDIM scheduler, constant guidance 6, 50 steps), and every threshold's time is
also given against it. `--compile` samples with compile=true (the compilation happens in a warm-up video).
It writes JSON, a markdown table and a PNG plot to benchmarks/results/ (device, torch version, command, date).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_common import psnr, run_meta, write_results
from PIL import Image, ImageDraw
from quality_vs_steps import ATTRIBUTES, Videos
from shapes_adherence import prompt_sets

from cogvid.shapes.dataset import plain_caption
from cogvid.shapes.measure import measure_video, score

RESULTS = Path(__file__).parent / "results"


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Mean SSIM of two (f, h, w, 3) uint8 videos over 7x7 box windows, per frame and channel (data range 255)."""
    x = torch.from_numpy(a).double().permute(0, 3, 1, 2)
    y = torch.from_numpy(b).double().permute(0, 3, 1, 2)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def mean(t):
        return F.avg_pool2d(t, window, stride=1)

    mx, my = mean(x), mean(y)
    vx, vy, cov = mean(x * x) - mx**2, mean(y * y) - my**2, mean(x * y) - mx * my
    value = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(value.mean())


def cases_of(seeds: list[int]) -> list[tuple]:
    return [(c, seed) for combos in prompt_sets().values() for c in combos for seed in seeds]


def diffusers_seconds(seeds: list[int]) -> float:
    """Median seconds per video of diffusers' pipeline on the shapes model's export, over the same cases."""
    import time

    from shapes_adherence import DiffusersVideos, exported_shapes_pipeline

    with exported_shapes_pipeline() as folder:
        make = DiffusersVideos(folder, 50, 6.0)
        make("a red circle moving right", 0)  # warm-up
        seconds = []
        for combination, seed in cases_of(seeds):
            start = time.perf_counter()
            make(plain_caption(*combination), seed)
            seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


def summarise(rows: list[dict]) -> dict:
    """One setting's videos (seconds, psnr, ssim, reused, adherence marks each) in figures: medians, PSNR minimum,
    the reused share and every accuracy in %."""
    accuracy = {a: 100.0 * sum(r[a] for r in rows) / len(rows) for a in ATTRIBUTES}
    return {
        "seconds": round(float(np.median([r["seconds"] for r in rows])), 3),
        "reused_percent": round(100.0 * float(np.mean([r["reused"] for r in rows])), 1),
        "psnr": round(float(np.median([r["psnr"] for r in rows])), 1),
        "psnr_min": round(float(np.min([r["psnr"] for r in rows])), 1),
        "ssim": round(float(np.median([r["ssim"] for r in rows])), 4),
        **{a: round(v, 1) for a, v in accuracy.items()},
        "adherence": round(sum(accuracy.values()) / len(ATTRIBUTES), 1),
        "videos": len(rows),
    }


def run(videos: Videos, thresholds: list[float], seeds: list[int]) -> dict[float, dict]:
    cases = cases_of(seeds)
    videos.make("a red circle moving right", 0, "dpmpp2m", 50)  # warm-up (and compile=true's compilation)
    exact: dict[tuple, np.ndarray] = {}
    results = {}
    for threshold in sorted(thresholds):
        rows = []
        for combination, seed in cases:
            prompt = plain_caption(*combination)
            frames, seconds = videos.make(prompt, seed, "dpmpp2m", 50, (f"sampler.cache={threshold}",))
            if threshold == 0:
                exact[(prompt, seed)] = frames
            reference = exact[(prompt, seed)]
            marks = score(measure_video(frames), combination)
            rows.append(
                {
                    "seconds": seconds,
                    "psnr": psnr(frames, reference),
                    "ssim": ssim(frames, reference),
                    "reused": videos.last_reuse,
                    **{a: bool(marks[a]) for a in ATTRIBUTES},
                }
            )
        results[threshold] = summarise(rows)
        r = results[threshold]
        print(
            f"threshold {threshold:4.2f}: {r['seconds']:.3f} s, reused {r['reused_percent']:5.1f} %, "
            f"PSNR {r['psnr']:5.1f} dB (min {r['psnr_min']}), SSIM {r['ssim']:.4f}, adherence {r['adherence']} %",
            flush=True,
        )
    base = results[min(results)]["seconds"]
    for r in results.values():
        r["speedup"] = round(base / r["seconds"], 2)
    return results


class CountingVideos(Videos):
    """Videos that also note the share of DiT calls the step cache answered in the last video."""

    def __init__(self, overrides: tuple[str, ...] = ()):
        super().__init__(overrides)
        self.last_reuse = 0.0
        from cogvid.diffusion import step_cache

        real = step_cache.StepCache.remember
        owner = self

        def remember(cache, first, last):
            owner._cache = cache
            return real(cache, first, last)

        step_cache.StepCache.remember = remember
        self._cache = None

    def make(self, *args, **kwargs):
        self._cache = None
        out = super().make(*args, **kwargs)
        self.last_reuse = self._cache.reused / self._cache.calls if self._cache is not None else 0.0
        return out


def plot(results: dict[float, dict], path: Path) -> None:
    """Speed-up against threshold, and PSNR against speed-up, drawn with PIL."""
    width, height, margin = 900, 380, 60
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    points = sorted((r["speedup"], r["psnr"], t) for t, r in results.items())
    x0, y0, x1, y1 = margin, margin, width - margin, height - margin
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text((x0, y0 - 25), "PSNR (dB) against the exact path vs speed-up; labels: threshold", fill="black")
    sx = [p[0] for p in points]
    sy = [min(p[1], 60.0) for p in points]
    lo_x, hi_x = min(sx), max(max(sx), min(sx) + 0.1)
    lo_y, hi_y = min(sy) - 2, max(sy) + 2

    def xy(vx, vy):
        return x0 + 10 + (vx - lo_x) / (hi_x - lo_x) * (x1 - x0 - 20), y1 - 10 - (vy - lo_y) / (hi_y - lo_y) * (
            y1 - y0 - 20
        )

    line = [xy(vx, vy) for vx, vy in zip(sx, sy, strict=True)]
    draw.line(line, fill=(31, 119, 180), width=2)
    for (vx, vy, t), (px, py) in zip(((p[0], min(p[1], 60.0), p[2]) for p in points), line, strict=True):
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=(31, 119, 180))
        label = f"{t:g}: {vx:.2f}x, " + ("exact" if vy >= 60.0 else f"{vy:.1f} dB")
        shown = (px - 150 if px > x1 - 160 else px + 6, py - 14 - 14 * (vy >= 60.0 and t > 0))
        draw.text(shown, label, fill="black")
    draw.text((x0, y1 + 8), f"speed-up {lo_x:.2f}x", fill="black")
    draw.text((x1 - 90, y1 + 8), f"{hi_x:.2f}x", fill="black")
    draw.text((x0 - 50, y0), f"{hi_y:.0f} dB", fill="black")
    draw.text((x0 - 50, y1 - 12), f"{lo_y:.0f} dB", fill="black")
    picture.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--thresholds", nargs="*", type=float, default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=5000)
    parser.add_argument("--compile", action="store_true", help="sample with compile=true")
    parser.add_argument("--name", default=None, help="results file stem (default step_cache[_compile])")
    args = parser.parse_args(argv)
    name = args.name or ("step_cache_compile" if args.compile else "step_cache")
    thresholds = sorted(set([0.0, *args.thresholds]))
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    results = run(CountingVideos(("compile=true",) if args.compile else ()), thresholds, seeds)
    peer = diffusers_seconds(seeds)
    for r in results.values():
        r["over_diffusers"] = round(r["seconds"] / peer, 2)
    meta = {
        **run_meta(),
        "sampler": "dpmpp2m, 50 steps (the default)" + (", compile=true" if args.compile else ""),
        "seeds": f"{seeds[0]}..{seeds[-1]}",
        "diffusers_seconds": round(peer, 3),
    }
    lines = [
        "# Step cache on the shapes model: threshold against speed and quality",
        "",
        f"- date: {meta['date']}",
        f"- device: {meta['device']}; torch {meta['torch']}",
        f"- command: `{meta['command']}`",
        f"- sampler: {meta['sampler']}; {results[0.0]['videos']} videos per threshold (held-out and seen prompts x "
        f"seeds {meta['seeds']}); PSNR / SSIM against the exact path (threshold 0), median (PSNR also its minimum)",
        f"- diffusers' CogVideoXPipeline on the same videos in this run: {meta['diffusers_seconds']} s per video",
        "",
        "| threshold | s / video | speed-up | / diffusers | DiT calls reused % | PSNR dB (min) | SSIM "
        "| colour / direction / shape % | adherence % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t, r in results.items():
        lines.append(
            f"| {t:g} | {r['seconds']} | {r['speedup']} | {r['over_diffusers']} | {r['reused_percent']} | "
            f"{r['psnr']} ({r['psnr_min']}) | {r['ssim']} | {r['colour']} / {r['direction']} / {r['shape']} | "
            f"{r['adherence']} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    write_results(RESULTS, name, {**meta, "results": {f"{t:g}": r for t, r in results.items()}}, table)
    plot(results, RESULTS / f"{name}.png")
    print(f"wrote {RESULTS / name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
