"""cogvid's step cache against cache-dit's DBCache on diffusers' CogVideoXPipeline, on the same shapes weights.

    .venv/bin/python benchmarks/cache_vs_cache_dit.py                          # every prompt, 1 seed
    .venv/bin/python benchmarks/cache_vs_cache_dit.py --prompts 3 --threads 1  # a quick look on a busy machine

Needs cache-dit (`pip install -e '.[bench]'`). The shapes model is exported once with `cogvid-export task=to_diffusers`
to a temporary folder, and diffusers' CogVideoXPipeline loads it (CogVideoXDDIMScheduler, 50 steps, constant
guidance 6, negative prompt ""). Three tools make the same videos (the prompts of benchmarks/shapes_adherence.py,
`--prompts` of them, with `--seeds` seeds):
- cache-dit: DBCache F1B0 (the first block decides, no block after the reuse) at each of `--cache-dit-thresholds`,
  with and without the TaylorSeer calibrator of order 1, on the diffusers pipeline (cache-dit's other options at
  their defaults: 8 warm-up steps); and the pipeline uncached;
- cogvid (parity): cogvid's sampler that follows the diffusers pipeline (docs/interop.md: DDIM, 50 steps, constant
  guidance 6, negative prompt "") at each of `--cogvid-thresholds` (sampler.cache, the other cache options at
  their defaults), and uncached;
- cogvid (default): the same on cogvid's default sampler (dpmpp2m, 50 steps, dynamic guidance);
- with `--parity-max-runs N ...`: the parity sampler again at each threshold, with sampler.cache_max_run=N.
Every setting's video of a prompt and seed is made in turn, in an order that rotates from one case to the next, so
that a drift of the machine's speed reaches all settings alike. For each setting the script records seconds per
video (median), the speed-up over the same tool uncached, the share of DiT calls that reused the cached blocks, PSNR
(median and minimum) and SSIM (median) of the decoded video against the same tool's uncached video, and adherence
(colour, direction, shape read from the pixels). It writes JSON, a markdown table and a PNG plot of the frontiers
(speed-up against median PSNR) to benchmarks/results/ (device, torch version, command, date).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from bench_common import psnr, run_meta, write_results
from PIL import Image, ImageDraw
from quality_vs_steps import ATTRIBUTES
from shapes_adherence import DiffusersVideos, exported_shapes_pipeline, prompt_sets
from step_cache import CountingVideos, ssim, summarise

from cogvid.shapes.dataset import plain_caption
from cogvid.shapes.measure import measure_video, score

RESULTS = Path(__file__).parent / "results"
STEPS, GUIDANCE = 50, 6.0
PARITY = ("sampler.zero_snr_rescale=full", "sampler.uncond=negative_prompt", "sampler.guider=constant")
COLOURS = {
    "cache-dit DBCache": (214, 39, 40),
    "cache-dit DBCache + TaylorSeer": (255, 127, 14),
    "cogvid (parity)": (31, 119, 180),
    "cogvid (default)": (44, 160, 44),
}


@dataclass(frozen=True)
class Setting:
    """One way of making a video: a tool, a line of the plot and its cache threshold (None: uncached)."""

    tool: str  # cache-dit | cogvid-parity | cogvid-default
    line: str  # the frontier it belongs to (the uncached run starts every line of its tool)
    threshold: float | None = None
    taylorseer: bool = False
    max_run: int | None = None  # cogvid's sampler.cache_max_run, when not its default

    @property
    def label(self) -> str:
        return f"{self.line} {'exact' if self.threshold is None else f'{self.threshold:g}'}"


def settings_of(
    cogvid_thresholds: list[float], cache_dit_thresholds: list[float], parity_max_runs: list[int] = ()
) -> list[Setting]:
    """Every setting of the run; `parity_max_runs`: more lines of cogvid's parity sampler, each at the thresholds with
    that sampler.cache_max_run."""
    out = [Setting("cache-dit", "cache-dit DBCache")]
    for t in cache_dit_thresholds:
        out += [
            Setting("cache-dit", "cache-dit DBCache", t),
            Setting("cache-dit", "cache-dit DBCache + TaylorSeer", t, True),
        ]
    for tool, line in (("cogvid-parity", "cogvid (parity)"), ("cogvid-default", "cogvid (default)")):
        out += [Setting(tool, line), *(Setting(tool, line, t) for t in cogvid_thresholds)]
        if tool == "cogvid-parity":
            for n in parity_max_runs:
                out += [Setting(tool, f"{line} run <= {n}", t, max_run=n) for t in cogvid_thresholds]
    return out


class CacheDitVideos:
    """diffusers' pipeline with cache-dit's DBCache (F1B0) switched to a setting's threshold between videos."""

    def __init__(self, folder: str):
        import cache_dit

        self.cache_dit = cache_dit
        self.make_video = DiffusersVideos(folder, STEPS, GUIDANCE)
        self.pipe = self.make_video.pipe
        self.current: Setting | None = None

    def make(self, prompt: str, seed: int, setting: Setting) -> tuple[np.ndarray, float, float]:
        """(frames, seconds, share of the transformer's calls that reused its blocks)."""
        cache_dit = self.cache_dit
        if setting != self.current:
            if self.current is not None and self.current.threshold is not None:
                cache_dit.disable_cache(self.pipe)
            if setting.threshold is not None:
                config = cache_dit.DBCacheConfig(
                    Fn_compute_blocks=1,
                    Bn_compute_blocks=0,
                    residual_diff_threshold=setting.threshold,
                    num_inference_steps=STEPS,
                )
                taylorseer = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1) if setting.taylorseer else None
                cache_dit.enable_cache(self.pipe, cache_config=config, calibrator_config=taylorseer)
            self.current = setting
        start = time.perf_counter()
        frames = self.make_video(prompt, seed)
        seconds = time.perf_counter() - start
        if setting.threshold is None:
            return frames, seconds, 0.0
        stats = cache_dit.summary(self.pipe, logging=False)[0]
        return frames, seconds, len(stats.cached_steps) / STEPS  # one transformer call per step (CFG batched)


class CogvidVideos:
    """cogvid's pipeline on the shapes model, on its default sampler or the diffusers-parity one."""

    def __init__(self):
        self.videos = CountingVideos()

    def make(self, prompt: str, seed: int, setting: Setting) -> tuple[np.ndarray, float, float]:
        sampler, extra = ("ddim", PARITY) if setting.tool == "cogvid-parity" else ("dpmpp2m", ())
        if setting.threshold is not None:
            extra = (*extra, f"sampler.cache={setting.threshold}")
        if setting.max_run is not None:
            extra = (*extra, f"sampler.cache_max_run={setting.max_run}")
        frames, seconds = self.videos.make(prompt, seed, sampler, STEPS, extra)
        return frames, seconds, self.videos.last_reuse


def run(tools: dict, settings: list[Setting], cases: list[tuple]) -> tuple[dict[Setting, dict], float]:
    """Every setting's figures, and the median PSNR of cogvid's uncached parity videos against diffusers'."""
    for setting in settings:  # warm-up: one video per setting (first-call costs, cache-dit's hooks)
        tools[setting.tool].make("a red circle moving right", 0, setting)
    rows: dict[Setting, list[dict]] = {s: [] for s in settings}
    exact: dict[tuple, np.ndarray] = {}
    for k, (combination, seed) in enumerate(cases):
        prompt = plain_caption(*combination)
        # the uncached runs first (every other setting's reference), the rest in an order that rotates per case
        cached = [s for s in settings if s.threshold is not None]
        shift = k % len(cached)
        for setting in [s for s in settings if s.threshold is None] + cached[shift:] + cached[:shift]:
            frames, seconds, reused = tools[setting.tool].make(prompt, seed, setting)
            if setting.threshold is None:
                exact[(setting.tool, prompt, seed)] = frames
            reference = exact[(setting.tool, prompt, seed)]
            marks = score(measure_video(frames), combination)
            rows[setting].append(
                {
                    "seconds": seconds,
                    "reused": reused,
                    "psnr": psnr(frames, reference),
                    "ssim": ssim(frames, reference),
                    **{a: bool(marks[a]) for a in ATTRIBUTES},
                }
            )
        print(f"case {k + 1}/{len(cases)}: {prompt}, seed {seed}", flush=True)
    parity = [
        psnr(exact[("cogvid-parity", plain_caption(*c), s)], exact[("cache-dit", plain_caption(*c), s)])
        for c, s in cases
    ]
    results = {s: summarise(r) for s, r in rows.items()}
    for s, r in results.items():
        base = results[next(x for x in settings if x.tool == s.tool and x.threshold is None)]["seconds"]
        r["speedup"] = round(base / r["seconds"], 2)
    return results, float(np.median(parity))


def plot(results: dict[Setting, dict], path: Path) -> None:
    """Median PSNR against speed-up, one line per frontier (its uncached point drawn at the top, "exact"), with PIL."""
    width, height, margin, top = 900, 480, 60, 60.0
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    x0, y0, x1, y1 = margin, margin, width - 230, height - margin
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text(
        (x0, y0 - 25), "median PSNR (dB) against the same tool uncached vs speed-up; labels: threshold", fill="black"
    )
    lines: dict[str, list[tuple[float, float, Setting]]] = {}
    for s, r in results.items():
        uncached = s.threshold is None
        for line in [s.line] if not uncached else [x.line for x in results if x.tool == s.tool]:
            lines.setdefault(line, []).append((r["speedup"], min(r["psnr"], top), s))
    points = [p for ps in lines.values() for p in ps]
    lo_x, hi_x = min(p[0] for p in points), max(max(p[0] for p in points), min(p[0] for p in points) + 0.1)
    lo_y, hi_y = min(p[1] for p in points) - 2, top + 2

    def xy(vx, vy):
        return (
            x0 + 10 + (vx - lo_x) / (hi_x - lo_x) * (x1 - x0 - 20),
            y1 - 10 - (vy - lo_y) / (hi_y - lo_y) * (y1 - y0 - 20),
        )

    for n, (line, ps) in enumerate(lines.items()):
        colour = COLOURS.get(line, (148, 103, 189))  # a parity line at another cache_max_run
        ps = sorted(set(ps), key=lambda p: (p[0], -p[1]))
        draw.line([xy(vx, vy) for vx, vy, _ in ps], fill=colour, width=2)
        for vx, vy, s in ps:
            px, py = xy(vx, vy)
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
            if s.threshold is not None:
                draw.text((px + 6, py - 14), f"{s.threshold:g}", fill=colour)
        draw.line([(x1 + 15, y0 + 20 * n + 6), (x1 + 35, y0 + 20 * n + 6)], fill=colour, width=3)
        draw.text((x1 + 40, y0 + 20 * n), line, fill="black")
    draw.text((x0, y1 + 8), f"speed-up {lo_x:.2f}x", fill="black")
    draw.text((x1 - 50, y1 + 8), f"{hi_x:.2f}x", fill="black")
    draw.text((x0 - 55, y0 + 4), "exact", fill="black")
    draw.text((x0 - 50, y1 - 12), f"{lo_y:.0f} dB", fill="black")
    picture.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=None, help="the first N prompts (default: all)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=5000)
    parser.add_argument("--cogvid-thresholds", nargs="*", type=float, default=[0.1, 0.2, 0.3, 0.4, 0.6])
    parser.add_argument("--cache-dit-thresholds", nargs="*", type=float, default=[0.1, 0.2, 0.3])
    parser.add_argument(
        "--parity-max-runs", nargs="*", type=int, default=[], help="more parity-sampler lines at these cache_max_run"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--name", default="cache_vs_cache_dit", help="results file stem")
    args = parser.parse_args(argv)
    try:
        import cache_dit  # noqa: F401
    except ImportError:
        print("this benchmark needs cache-dit: pip install -e '.[bench]'", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    combinations = [c for combos in prompt_sets().values() for c in combos][: args.prompts]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    cases = [(c, seed) for c in combinations for seed in seeds]
    settings = settings_of(args.cogvid_thresholds, args.cache_dit_thresholds, args.parity_max_runs)
    with exported_shapes_pipeline() as folder:
        cogvid_videos = CogvidVideos()
        tools = {
            "cache-dit": CacheDitVideos(folder),
            "cogvid-parity": cogvid_videos,
            "cogvid-default": cogvid_videos,
        }
        results, parity = run(tools, settings, cases)
    meta = {
        **run_meta(),
        "videos_per_setting": len(cases),
        "seeds": f"{seeds[0]}..{seeds[-1]}",
        "cache_dit": cache_dit.__version__,
        "exact_parity_psnr": round(parity, 1),
    }
    lines = [
        "# cogvid's step cache against cache-dit's DBCache on the same shapes weights",
        "",
        f"- date: {meta['date']}",
        f"- device: {meta['device']}; torch {meta['torch']}; cache-dit {meta['cache_dit']}",
        f"- command: `{meta['command']}`",
        f"- {len(cases)} videos per setting ({len(combinations)} prompts of benchmarks/shapes_adherence.py x seeds "
        f"{meta['seeds']}), {STEPS} steps; PSNR / SSIM against the same tool's uncached video, median (PSNR also its "
        "minimum); speed-up over the same tool uncached, in this run",
        "- cache-dit: DBCache F1B0 (8 warm-up steps, its default) on diffusers' CogVideoXPipeline (DDIM, constant "
        "guidance 6); cogvid (parity): sampler=ddim with the diffusers-parity overrides of docs/interop.md; "
        "cogvid (default): dpmpp2m, dynamic guidance; cogvid's cache options at their defaults",
        f"- the two uncached parity runs (cogvid vs diffusers) agree to {meta['exact_parity_psnr']} dB (median PSNR)",
        "",
        "| setting | s / video | speed-up | DiT calls reused % | PSNR dB (min) | SSIM | colour / direction / shape % "
        "| adherence % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, r in results.items():
        lines.append(
            f"| {s.label} | {r['seconds']} | {r['speedup']} | {r['reused_percent']} | {r['psnr']} ({r['psnr_min']}) | "
            f"{r['ssim']} | {r['colour']} / {r['direction']} / {r['shape']} | {r['adherence']} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    payload = {
        **meta,
        "results": [
            {"tool": s.tool, "line": s.line, "threshold": s.threshold, "max_run": s.max_run, **r}
            for s, r in results.items()
        ],
    }
    write_results(RESULTS, args.name, payload, table)
    plot(results, RESULTS / f"{args.name}.png")
    print(f"wrote {RESULTS / args.name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
