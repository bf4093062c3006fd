"""Quality against steps for every solver, on the shapes model: prompt adherence, PSNR against a high-step reference
and wall time.

    .venv/bin/python benchmarks/quality_vs_steps.py                         # every solver at 5, 10, 20 and 50 steps
    .venv/bin/python benchmarks/quality_vs_steps.py --solvers ddim heun --steps 10 20 --seeds 1

The pipeline loads once; each (solver, steps) setting swaps only the sampler config. Prompts are those of
benchmarks/shapes_adherence.py (the held-out combinations and as many seen ones), each with `--seeds` seeds. For each
setting the script records:
- adherence: colour, direction and shape read from the pixels (`cogvid.shapes.measure`), and their mean;
- PSNR (dB) of the decoded video against the same solver, prompt and seed at `--reference-steps` steps (default
  100): how far the video is from what that solver converges to (a stochastic solver draws other noise at other
  step counts, so its PSNR also measures how much its result depends on the step count);
- seconds per video (median; text encoding, sampling and decoding).
It writes JSON, a markdown table and a PNG plot to benchmarks/results/ (device, torch version, command, date).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import psnr, run_meta, write_results
from PIL import Image, ImageDraw
from shapes_adherence import prompt_sets

from cogvid.config.compose import compose
from cogvid.config.schema import Solver
from cogvid.inference.pipeline import VideoPipeline
from cogvid.shapes.dataset import plain_caption
from cogvid.shapes.measure import measure_video, score
from cogvid.utils.media import to_uint8_frames

RESULTS = Path(__file__).parent / "results"
STEMS = "quality_vs_steps"
DEFAULT = ("dpmpp2m", 50)  # conf/sample.yaml's sampler and steps
ATTRIBUTES = ("colour", "direction", "shape")


def sampler_names() -> list[str]:
    """Every sampler config in conf/sampler (one per solver)."""
    from cogvid.config.compose import conf_dir

    return sorted(p.stem for p in (conf_dir() / "sampler").glob("*.yaml"))


class Videos:
    """The shapes model loaded once; `make(prompt, seed, sampler, steps)` swaps the sampler config only."""

    def __init__(self, overrides: tuple[str, ...] = ()):
        """overrides: more cogvid-sample overrides for the whole pipeline (e.g. compile=true)."""
        self.pipeline = VideoPipeline.from_config(compose(["model=shapes", *overrides]))
        self.shape = self.pipeline.shape_for(None)
        self.samplers: dict[tuple, object] = {}

    def make(self, prompt: str, seed: int, sampler: str, steps: int, extra: tuple[str, ...] = ()):
        """(frames, seconds) of one video; `extra`: more sampler overrides (e.g. sampler.cache=0.2)."""
        key = (sampler, steps, extra)
        if key not in self.samplers:
            overrides = ["model=shapes", f"sampler={sampler}", f"sampler.num_steps={steps}", *extra]
            self.samplers[key] = compose(overrides).sampler
        self.pipeline.cfg.sampler = self.samplers[key]
        start = time.perf_counter()
        result = self.pipeline.generate(prompt, seed=seed, shape=self.shape, progress=False)
        return to_uint8_frames(result.video), time.perf_counter() - start


def run(videos: Videos, samplers: list[str], steps: list[int], seeds: list[int], reference_steps: int) -> list[dict]:
    rows = []
    cases = [(split, c, seed) for split, combos in prompt_sets().items() for c in combos for seed in seeds]
    for sampler in samplers:
        for split, combination, seed in cases:
            prompt = plain_caption(*combination)
            reference, _ = videos.make(prompt, seed, sampler, reference_steps)
            for n in steps:
                frames, seconds = videos.make(prompt, seed, sampler, n)
                marks = score(measure_video(frames), combination)
                rows.append(
                    {
                        "sampler": sampler,
                        "steps": n,
                        "split": split,
                        "prompt": prompt,
                        "seed": seed,
                        "seconds": round(seconds, 3),
                        "psnr": round(psnr(frames, reference), 2),
                        **{a: bool(marks[a]) for a in ATTRIBUTES},
                    }
                )
        done = [r for r in rows if r["sampler"] == sampler]
        print(f"{sampler:18s} " + "  ".join(_cell(done, n) for n in steps), flush=True)
    return rows


def _cell(rows: list[dict], n: int) -> str:
    s = summarise([r for r in rows if r["steps"] == n])
    return f"{n:3d}: {s['adherence']:5.1f} % {s['psnr']:5.1f} dB {s['seconds']:.2f} s"


def summarise(rows: list[dict]) -> dict:
    """Accuracy of each attribute (%), their mean (adherence), median PSNR (dB) and median seconds per video."""
    out = {a: 100.0 * sum(r[a] for r in rows) / len(rows) for a in ATTRIBUTES}
    return {
        **{a: round(v, 1) for a, v in out.items()},
        "adherence": round(sum(out.values()) / len(ATTRIBUTES), 1),
        "psnr": round(float(np.median([r["psnr"] for r in rows])), 1),
        "seconds": round(float(np.median([r["seconds"] for r in rows])), 3),
        "videos": len(rows),
    }


def table(rows: list[dict], samplers: list[str], steps: list[int]) -> dict[str, dict[int, dict]]:
    return {
        s: {n: summarise([r for r in rows if (r["sampler"], r["steps"]) == (s, n)]) for n in steps} for s in samplers
    }


def fastest_within(results: dict, points: float = 2.0) -> tuple[str, int, dict] | None:
    """The quickest setting whose adherence is within `points` of the default's and that takes at most half its
    time; None when there is none (or the default was not measured)."""
    name, n = DEFAULT
    base = results.get(name, {}).get(n)
    if base is None:
        return None
    fits = [
        (s["seconds"], sampler, steps, s)
        for sampler, row in results.items()
        for steps, s in row.items()
        if s["adherence"] >= base["adherence"] - points and s["seconds"] <= base["seconds"] / 2
    ]
    return min(fits)[1:] if fits else None


def markdown(results: dict, steps: list[int], meta: dict, fast) -> str:
    lines = [
        "# Quality against steps, every solver, on the shapes model",
        "",
        f"- date: {meta['date']}",
        f"- device: {meta['device']}; torch {meta['torch']}",
        f"- command: `{meta['command']}`",
        f"- {meta['videos_per_setting']} videos per setting (held-out and seen prompts x seeds {meta['seeds']}); "
        f"PSNR against the same solver at {meta['reference_steps']} steps; adherence = mean of colour, direction and "
        "shape accuracy",
        "",
        "| sampler | " + " | ".join(f"{n} steps: adherence % / PSNR dB / s" for n in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for sampler, row in results.items():
        cells = [f"{row[n]['adherence']} / {row[n]['psnr']} / {row[n]['seconds']}" for n in steps]
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    lines += ["", "Colour / direction / shape accuracy (%):", ""]
    lines += ["| sampler | " + " | ".join(f"{n} steps" for n in steps) + " |", "|---|" + "---|" * len(steps)]
    for sampler, row in results.items():
        lines.append(
            f"| {sampler} | "
            + " | ".join(f"{row[n]['colour']} / {row[n]['direction']} / {row[n]['shape']}" for n in steps)
            + " |"
        )
    name, n = DEFAULT
    if fast is None:
        lines += ["", f"No setting keeps adherence within 2 points of {name} at {n} steps in half its time or less."]
    else:
        sampler, steps_, s = fast
        base = results[name][n]
        lines += [
            "",
            f"Fastest setting within 2 points of the default ({name}, {n} steps: {base['adherence']} %, "
            f"{base['seconds']} s): **{sampler} at {steps_} steps**, {s['adherence']} % in {s['seconds']} s.",
        ]
    return "\n".join(lines) + "\n"


def plot(results: dict, steps: list[int], path: Path) -> None:
    """Two panels, adherence and PSNR against steps (log scale), one line per sampler; drawn with PIL."""
    width, height, margin = 1100, 460, 60
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 0), (120, 60, 200)]  # fmt: skip
    panels = [("adherence %", "adherence", 0.0, 100.0), ("PSNR dB vs reference", "psnr", None, None)]
    panel_w = (width - 220 - 3 * margin) // 2  # two panels, then the legend
    for k, (title, key, lo, hi) in enumerate(panels):
        values = [row[n][key] for row in results.values() for n in steps]
        lo = min(values) if lo is None else lo
        hi = max(values) if hi is None else hi
        hi = hi if hi > lo else lo + 1
        x0, y0, x1, y1 = (
            margin + k * (panel_w + margin),
            margin,
            margin + k * (panel_w + margin) + panel_w,
            height - margin,
        )
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, y0 - 20), title, fill="black")
        logs = [math.log(n) for n in steps]

        def xy(n, v, x0=x0, x1=x1, y0=y0, y1=y1, lo=lo, hi=hi, logs=logs):
            fx = (math.log(n) - logs[0]) / ((logs[-1] - logs[0]) or 1)
            return x0 + 10 + fx * (x1 - x0 - 20), y1 - 10 - (v - lo) / (hi - lo) * (y1 - y0 - 20)

        for n in steps:
            draw.text((xy(n, lo)[0] - 6, y1 + 5), str(n), fill="black")
        draw.text((x0 - 45, y0), f"{hi:.0f}", fill="black")
        draw.text((x0 - 45, y1 - 12), f"{lo:.0f}", fill="black")
        for i, row in enumerate(results.values()):
            points = [xy(n, row[n][key]) for n in steps]
            draw.line(points, fill=colours[i % len(colours)], width=2)
            for p in points:
                draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=colours[i % len(colours)])
    for i, sampler in enumerate(results):
        y = margin + 18 * i
        draw.line([(width - 190, y + 6), (width - 165, y + 6)], fill=colours[i % len(colours)], width=3)
        draw.text((width - 160, y), sampler, fill="black")
    draw.text((margin, height - 25), "steps (log scale)", fill="black")
    picture.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--solvers", nargs="*", default=None, help="sampler configs (default: all in conf/sampler)")
    parser.add_argument("--steps", nargs="*", type=int, default=[5, 10, 20, 50])
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2)")
    parser.add_argument("--first-seed", type=int, default=5000)
    parser.add_argument("--reference-steps", type=int, default=100)
    parser.add_argument("--name", default=STEMS, help=f"results file stem (default {STEMS})")
    args = parser.parse_args(argv)
    samplers = args.solvers or sampler_names()
    known = set(sampler_names())
    if unknown := [s for s in samplers if s not in known]:
        parser.error(f"unknown sampler(s) {unknown}; known: {sorted(known)}")
    steps, seeds = sorted(args.steps), list(range(args.first_seed, args.first_seed + args.seeds))
    torch.manual_seed(0)
    rows = run(Videos(), samplers, steps, seeds, args.reference_steps)
    results = table(rows, samplers, steps)
    fast = fastest_within(results)
    meta = {
        **run_meta(),
        "seeds": f"{seeds[0]}..{seeds[-1]}",
        "reference_steps": args.reference_steps,
        "videos_per_setting": len(rows) // (len(samplers) * len(steps)),
        "solvers": {
            name: Solver(compose(["model=shapes", f"sampler={name}"]).sampler.solver).value for name in samplers
        },
    }
    text = markdown(results, steps, meta, fast)
    print(text)
    payload = {**meta, "results": {s: {str(n): v for n, v in row.items()} for s, row in results.items()}}
    payload["fastest_within_2_points"] = None if fast is None else {"sampler": fast[0], "steps": fast[1], **fast[2]}
    write_results(RESULTS, args.name, {**payload, "rows": rows}, text)
    plot(results, steps, RESULTS / f"{args.name}.png")
    print(f"wrote {RESULTS / args.name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
