"""Quality against steps on the shapes model, cogvid's solvers next to diffusers' schedulers on the same weights:
prompt adherence, PSNR against a high-step reference, seconds per video, and the time ratio at equal quality.

    .venv/bin/python benchmarks/quality_vs_steps.py       # every cogvid sampler and both diffusers schedulers
    .venv/bin/python benchmarks/quality_vs_steps.py --solvers ddim fast --diffusers-schedulers ddim --steps 10 20
    .venv/bin/python benchmarks/quality_vs_steps.py --diffusers-schedulers    # none: cogvid alone

Two tools make the videos, each line (a tool and its solver) at every `--steps` count:
- cogvid: the pipeline loads once and each setting swaps only the sampler config (`--solvers`: configs of
  conf/sampler, default all). A preset that fixes its own step count (`fast`, dpmpp2m_edm at 10 steps) runs at that
  count only;
- diffusers: CogVideoXPipeline loaded from the shapes model exported with `cogvid-export task=to_diffusers` (to a
  temporary folder), with CogVideoXDDIMScheduler (`ddim`) and CogVideoXDPMScheduler (`dpm`), `--diffusers-schedulers`
  (needs diffusers, `pip install -e '.[bench]'`), at the pipeline's defaults: constant guidance 6, negative prompt "".
Prompts are those of benchmarks/shapes_adherence.py (the held-out combinations and as many seen ones), each with
`--seeds` seeds. For each case every line first makes its reference, then every setting's video is made in an order
that rotates from one case to the next, so that a drift of the machine's speed reaches all settings alike (one
warm-up video per line comes first). For each setting the script records:
- adherence: colour, direction and shape read from the pixels (`cogvid.shapes.measure`), and their mean;
- PSNR (dB) of the decoded video against the same line, prompt and seed at `--reference-steps` steps (default 200):
  how far the video is from what that tool's solver converges to (a stochastic solver, cogvid's dpmpp2m or
  diffusers' dpm, draws other noise at other step counts, so its PSNR also measures how much its result depends on
  the step count);
- seconds per video (median; text encoding, sampling and decoding; cogvid encodes each prompt once per process,
  diffusers at every call: T5 here is 2 layers of width 64).
Then, for each quality level (median PSNR of at least each of `--psnr-levels` against the tool's own reference;
adherence within 2 points of cogvid's default, dpmpp2m at 50 steps, or of diffusers', ddim at 50 steps), the fastest
setting of each tool that reaches it and the ratio of their seconds; and each preset (sampler=fast) against the
fastest diffusers setting with its adherence and PSNR, and against diffusers' default.
It writes JSON, a markdown table and a PNG plot (quality against seconds per video) to benchmarks/results/ (device,
torch version, command, date, the load average before and after, and `--conditions`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from bench_common import psnr, run_meta, write_results
from PIL import Image, ImageDraw
from shapes_adherence import DIFFUSERS_SCHEDULERS, DiffusersVideos, exported_shapes_pipeline, prompt_sets

from cogvid.config.compose import compose
from cogvid.config.schema import Solver
from cogvid.inference.pipeline import VideoPipeline
from cogvid.shapes.dataset import plain_caption
from cogvid.shapes.measure import measure_video, score
from cogvid.utils.media import to_uint8_frames

RESULTS = Path(__file__).parent / "results"
STEMS = "quality_vs_steps"
DEFAULT = ("cogvid", "dpmpp2m", 50)  # conf/sample.yaml's sampler and steps
DIFFUSERS_DEFAULT = ("diffusers", "ddim", 50)  # the CogVideoX-2B pipeline's scheduler, diffusers' default steps
PRESETS = ("fast",)  # sampler configs that fix their own step count: measured at that count only
GUIDANCE = 6.0  # diffusers' default guidance scale (cogvid's samplers: 6, on the dynamic ramp)
ATTRIBUTES = ("colour", "direction", "shape")
WARM_UP = ("a red circle moving right", 0)


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
        pipeline = self.pipeline.with_settings(replace(self.pipeline.settings, sampler=self.samplers[key]))
        start = time.perf_counter()
        result = pipeline.generate(prompt, seed=seed, shape=self.shape, progress=False)
        return to_uint8_frames(result.video), time.perf_counter() - start


@dataclass(frozen=True)
class Line:
    """One curve of the frontier: a tool (cogvid | diffusers), its solver (a cogvid sampler config or a diffusers
    scheduler) and the step counts it runs at."""

    tool: str
    solver: str
    steps: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.tool} {self.solver}"


class Tools:
    """Every line's videos: cogvid's pipeline loaded once, and one diffusers pipeline per scheduler from `folder`."""

    def __init__(self, folder: str | None, schedulers: list[str]):
        self.cogvid = Videos()
        self.diffusers = {name: DiffusersVideos(folder, 50, GUIDANCE, name) for name in schedulers}

    def make(self, line: Line, prompt: str, seed: int, steps: int) -> tuple[np.ndarray, float]:
        """(frames, seconds) of one video."""
        if line.tool == "cogvid":
            return self.cogvid.make(prompt, seed, line.solver, steps)
        start = time.perf_counter()
        frames = self.diffusers[line.solver](prompt, seed, steps)
        return frames, time.perf_counter() - start

    def same_video(self, line: Line, steps: int) -> str:
        """What fixes the line's video of a prompt and seed at `steps`: lines that agree on it share a reference
        (sampler=fast at 200 steps is dpmpp2m_edm at 200 steps)."""
        if line.tool == "cogvid":
            return f"cogvid {compose(['model=shapes', f'sampler={line.solver}', f'sampler.num_steps={steps}']).sampler}"
        return f"{line.label} {steps}"


def cases_of(seeds: list[int], prompts: int | None) -> list[tuple[str, tuple, int]]:
    """(split, combination, seed): the first `prompts` prompts (default all), taken from the held-out and the seen
    ones in turn, each with every seed."""
    sets = prompt_sets()
    longest = max(len(combos) for combos in sets.values())
    in_turn = [(split, combos[i]) for i in range(longest) for split, combos in sets.items() if i < len(combos)]
    return [(split, c, seed) for split, c in in_turn[:prompts] for seed in seeds]


def run(tools: Tools, lines: list[Line], cases: list[tuple], reference_steps: int) -> list[dict]:
    settings = [(line, n) for line in lines for n in line.steps]
    for line in lines:  # warm-up: the first call's costs of each tool and solver
        tools.make(line, *WARM_UP, line.steps[0])
    rows = []
    for k, (split, combination, seed) in enumerate(cases):
        prompt = plain_caption(*combination)
        made: dict[str, np.ndarray] = {}
        for line in lines:
            key = tools.same_video(line, reference_steps)
            if key not in made:
                made[key] = tools.make(line, prompt, seed, reference_steps)[0]
        references = {line: made[tools.same_video(line, reference_steps)] for line in lines}
        shift = k % len(settings)
        for line, n in settings[shift:] + settings[:shift]:
            frames, seconds = tools.make(line, prompt, seed, n)
            marks = score(measure_video(frames), combination)
            rows.append(
                {
                    "tool": line.tool,
                    "solver": line.solver,
                    "steps": n,
                    "split": split,
                    "prompt": prompt,
                    "seed": seed,
                    "seconds": round(seconds, 3),
                    "psnr": round(psnr(frames, references[line]), 2),
                    **{a: bool(marks[a]) for a in ATTRIBUTES},
                }
            )
        print(f"case {k + 1}/{len(cases)}: {prompt}, seed {seed}", flush=True)
    return rows


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


def table(rows: list[dict], lines: list[Line]) -> dict[Line, dict[int, dict]]:
    return {
        line: {
            n: summarise([r for r in rows if (r["tool"], r["solver"], r["steps"]) == (line.tool, line.solver, n)])
            for n in line.steps
        }
        for line in lines
    }


def setting(results: dict, tool: str, solver: str, steps: int) -> tuple[Line, int, dict] | None:
    """(line, steps, summary) of one measured setting; None when it was not measured."""
    for line, row in results.items():
        if (line.tool, line.solver) == (tool, solver) and steps in row:
            return line, steps, row[steps]
    return None


def fastest(results: dict, tool: str, reaches) -> tuple[Line, int, dict] | None:
    """The tool's quickest setting whose summary `reaches` the level; None when none does."""
    fits = [(line, n, s) for line, row in results.items() if line.tool == tool for n, s in row.items() if reaches(s)]
    return min(fits, key=lambda fit: fit[2]["seconds"]) if fits else None


def equal_quality(results: dict, psnr_levels: list[float]) -> list[dict]:
    """For each quality level, cogvid's and diffusers' quickest settings that reach it and the ratio of their
    seconds per video; then each preset against diffusers' quickest setting at the preset's quality and against
    diffusers' default."""
    levels = [(f"PSNR >= {t:g} dB", lambda s, t=t: s["psnr"] >= t) for t in psnr_levels]
    for tool, solver, n in (DEFAULT, DIFFUSERS_DEFAULT):
        if (base := setting(results, tool, solver, n)) is not None:
            floor = round(base[2]["adherence"] - 2, 1)
            name = f"adherence >= {floor} % (the default of {tool}, {solver} at {n} steps, - 2 points)"
            levels.append((name, lambda s, floor=floor: s["adherence"] >= floor))
    out = [comparison(name, fastest(results, "cogvid", f), fastest(results, "diffusers", f)) for name, f in levels]
    for line, row in results.items():
        if line.tool != "cogvid" or line.solver not in PRESETS:
            continue
        (n, s), own = next(iter(row.items())), f"sampler={line.solver}"
        at = fastest(results, "diffusers", lambda x, s=s: x["adherence"] >= s["adherence"] and x["psnr"] >= s["psnr"])
        out.append(comparison(f"{own}'s quality (adherence and PSNR at least its own)", (line, n, s), at))
        out.append(comparison(f"{own} against diffusers' default", (line, n, s), setting(results, *DIFFUSERS_DEFAULT)))
    return out


def comparison(level: str, cogvid: tuple | None, diffusers: tuple | None) -> dict:
    def described(found):
        if found is None:
            return None
        line, n, s = found
        return {"solver": line.solver, "steps": n, **{k: s[k] for k in ("adherence", "psnr", "seconds")}}

    ratio = None if cogvid is None or diffusers is None else round(cogvid[2]["seconds"] / diffusers[2]["seconds"], 2)
    return {"level": level, "cogvid": described(cogvid), "diffusers": described(diffusers), "ratio": ratio}


def markdown(results: dict, steps: list[int], meta: dict, levels: list[dict]) -> str:
    lines = [
        "# Quality against steps on the shapes model: cogvid's solvers and diffusers' schedulers",
        "",
        f"- date: {meta['date']}",
        f"- device: {meta['device']}; torch {meta['torch']}; diffusers {meta['diffusers']}",
        f"- command: `{meta['command']}`",
        f"- conditions: {meta['conditions']}; load average (1 min) {meta['load_before']} before, "
        f"{meta['load_after']} after",
        f"- {meta['videos_per_setting']} videos per setting (held-out and seen prompts x seeds {meta['seeds']}); "
        f"PSNR (median) against the same tool and solver at {meta['reference_steps']} steps; adherence = mean of "
        "colour, direction and shape accuracy; seconds per video, median, settings interleaved in one run",
        "- cogvid: its samplers (dynamic guidance 6, unconditional = zeros); diffusers: CogVideoXPipeline on the "
        'same weights exported by `cogvid-export task=to_diffusers` (constant guidance 6, negative prompt "")',
        "",
        "| tool | solver | " + " | ".join(f"{n} steps: adherence % / PSNR dB / s" for n in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    for line, row in results.items():
        cells = [f"{row[n]['adherence']} / {row[n]['psnr']} / {row[n]['seconds']}" if n in row else "" for n in steps]
        lines.append(f"| {line.tool} | {line.solver} | " + " | ".join(cells) + " |")
    lines += ["", "Colour / direction / shape accuracy (%):", ""]
    lines += ["| tool | solver | " + " | ".join(f"{n} steps" for n in steps) + " |", "|---|---|" + "---|" * len(steps)]
    for line, row in results.items():
        cells = [f"{row[n]['colour']} / {row[n]['direction']} / {row[n]['shape']}" if n in row else "" for n in steps]
        lines.append(f"| {line.tool} | {line.solver} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "At equal quality: the quickest setting of each tool that reaches the level (PSNR against the tool's own "
        f"{meta['reference_steps']}-step reference), and cogvid's seconds per video over diffusers':",
        "",
        "| quality level | cogvid | adherence / PSNR / s | diffusers | adherence / PSNR / s | cogvid / diffusers |",
        "|---|---|---|---|---|---|",
    ]
    for level in levels:
        cells = []
        for tool in ("cogvid", "diffusers"):
            found = level[tool]
            cells += (
                ["none reaches it", ""]
                if found is None
                else [f"{found['solver']}, {found['steps']} steps", f"{found['adherence']} / {found['psnr']} / "
                      f"{found['seconds']}"]
            )  # fmt: skip
        ratio = "" if level["ratio"] is None else f"**{level['ratio']}**"
        lines.append(f"| {level['level']} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines) + "\n"


COOL = [(31, 119, 180), (44, 160, 44), (148, 103, 189), (23, 190, 207), (0, 0, 0), (127, 127, 127), (188, 189, 34),
        (120, 60, 200), (140, 86, 75), (90, 90, 160), (0, 110, 60)]  # fmt: skip  # cogvid's lines
WARM = [(214, 39, 40), (255, 127, 14), (227, 119, 194)]  # diffusers' lines


def plot(results: dict, path: Path, top: float = 60.0) -> None:
    """Two panels, adherence and PSNR against seconds per video, one line per tool and solver (cogvid cool colours,
    diffusers warm), each point labelled with its step count; PSNR drawn at most `top`; with PIL."""
    width, height, margin = 1200, 480, 60
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    colours, cool, warm = {}, iter(COOL * 2), iter(WARM * 4)
    for line in results:
        colours[line] = next(cool if line.tool == "cogvid" else warm)
    seconds = [s["seconds"] for row in results.values() for s in row.values()]
    lo_x, hi_x = 0.0, max(seconds) * 1.05
    panel_w, y0, y1 = (width - 230 - 3 * margin) // 2, margin, height - margin  # two panels, then the legend
    panels = [("adherence %", "adherence", 100.0), ("PSNR dB against the own reference", "psnr", top)]
    for k, (title, key, cap) in enumerate(panels):
        values = [min(s[key], cap) for row in results.values() for s in row.values()]
        lo, hi = math.floor(min(values)) - 2, math.ceil(max(values)) + 2
        x0 = margin + k * (panel_w + margin)
        x1 = x0 + panel_w
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, y0 - 20), title, fill="black")

        def xy(vx, vy, x0=x0, x1=x1, lo=lo, hi=hi, cap=cap):
            return (
                x0 + 10 + (vx - lo_x) / (hi_x - lo_x) * (x1 - x0 - 20),
                y1 - 10 - (min(vy, cap) - lo) / (hi - lo) * (y1 - y0 - 20),
            )

        for line, row in results.items():
            points = [(xy(s["seconds"], s[key]), n) for n, s in sorted(row.items())]
            if len(points) > 1:
                draw.line([p for p, _ in points], fill=colours[line], width=2)
            for (px, py), n in points:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colours[line])
                draw.text((px + 4, py - 13), str(n), fill=colours[line])
        draw.text((x0 - 45, y0), f"{hi:.0f}", fill="black")
        draw.text((x0 - 45, y1 - 12), f"{lo:.0f}", fill="black")
        draw.text((x0, y1 + 6), f"{lo_x:.1f} s", fill="black")
        draw.text((x1 - 40, y1 + 6), f"{hi_x:.2f} s", fill="black")
    for i, line in enumerate(results):
        y = margin + 18 * i
        draw.line([(width - 200, y + 6), (width - 175, y + 6)], fill=colours[line], width=3)
        draw.text((width - 170, y), line.label, fill="black")
    draw.text((margin, height - 25), "seconds per video; labels: steps", fill="black")
    picture.save(path)


def lines_of(solvers: list[str], schedulers: list[str], steps: list[int]) -> list[Line]:
    """cogvid's lines (a preset at its config's own step count), then diffusers'."""
    out = []
    for name in solvers:
        own = (compose(["model=shapes", f"sampler={name}"]).sampler.num_steps,) if name in PRESETS else None
        out.append(Line("cogvid", name, own or tuple(steps)))
    return out + [Line("diffusers", name, tuple(steps)) for name in schedulers]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--solvers", nargs="*", default=None, help="sampler configs (default: all in conf/sampler)")
    parser.add_argument(
        "--diffusers-schedulers",
        nargs="*",
        default=list(DIFFUSERS_SCHEDULERS),
        choices=list(DIFFUSERS_SCHEDULERS),
        help="diffusers' schedulers (default: ddim dpm; none: cogvid alone)",
    )
    parser.add_argument("--steps", nargs="*", type=int, default=[5, 10, 20, 50])
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2)")
    parser.add_argument("--prompts", type=int, default=None, help="the first N prompts, held-out and seen in turn")
    parser.add_argument("--first-seed", type=int, default=5000)
    parser.add_argument("--reference-steps", type=int, default=200)
    parser.add_argument("--psnr-levels", nargs="*", type=float, default=[25.0, 30.0, 35.0])
    parser.add_argument("--conditions", default="not stated", help="what else ran on the machine, for the results")
    parser.add_argument("--name", default=STEMS, help=f"results file stem (default {STEMS})")
    args = parser.parse_args(argv)
    samplers = args.solvers if args.solvers is not None else sampler_names()
    known = set(sampler_names())
    if unknown := [s for s in samplers if s not in known]:
        parser.error(f"unknown sampler(s) {unknown}; known: {sorted(known)}")
    schedulers = args.diffusers_schedulers
    if schedulers:
        try:
            import diffusers
        except ImportError:
            parser.error("diffusers' schedulers need diffusers: pip install -e '.[bench]' (or --diffusers-schedulers)")
    steps, seeds = sorted(args.steps), list(range(args.first_seed, args.first_seed + args.seeds))
    lines = lines_of(samplers, schedulers, steps)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    with exported_shapes_pipeline() if schedulers else contextlib.nullcontext() as folder:
        rows = run(Tools(folder, schedulers), lines, cases_of(seeds, args.prompts), args.reference_steps)
    results = table(rows, lines)
    levels = equal_quality(results, args.psnr_levels)
    meta = {
        **run_meta(),
        "diffusers": diffusers.__version__ if schedulers else "not used",
        "conditions": args.conditions,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "seeds": f"{seeds[0]}..{seeds[-1]}",
        "reference_steps": args.reference_steps,
        "videos_per_setting": len(rows) // sum(len(line.steps) for line in lines),
        "solvers": {
            **{name: Solver(compose(["model=shapes", f"sampler={name}"]).sampler.solver).value for name in samplers},
            **{f"diffusers {name}": DIFFUSERS_SCHEDULERS[name] for name in schedulers},
        },
    }
    text = markdown(results, steps, meta, levels)
    print(text)
    payload = {
        **meta,
        "results": [
            {"tool": line.tool, "solver": line.solver, "steps": {str(n): v for n, v in row.items()}}
            for line, row in results.items()
        ],
        "equal_quality": levels,
    }
    write_results(RESULTS, args.name, {**payload, "rows": rows}, text)
    plot(results, RESULTS / f"{args.name}.png")
    print(f"wrote {RESULTS / args.name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
