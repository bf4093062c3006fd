"""One picture to compare a sweep: a PNG grid of frames, one labelled cell per job, rows and columns the swept values.

`cogvid-sample -m sampler.guidance_scale=3,6,9 sampler.num_steps=25,50 ...` runs every combination in its own
numbered dir; when the sweep ends, `ContactSheetCallback` (hooked in `conf/sample.yaml`) writes
`contact_sheet.png` and `contact_sheet.json` (which cell holds which video) into the sweep dir. Each cell shows the
first video of its job: its first, middle and last frames side by side, under a label with the job's values.
"""

from __future__ import annotations

import json
import logging
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback

from cogvid.utils.files import write_atomic
from cogvid.utils.user_files import read_json

log = logging.getLogger(__name__)

LABEL_HEIGHT = 14  # pixels above every cell and header
PAD = 4


def _parse_override(text: str) -> tuple[str, str] | None:
    key, sep, value = text.partition("=")
    return (key.lstrip("+~"), value) if sep else None


def sweep_jobs(sweep_dir: Path) -> list[dict]:
    """Every job dir under `sweep_dir` with its first video and overrides, in job order."""
    from cogvid.inference.outputs import SAMPLES_DIR  # here, not above: Hydra builds the callback before every run

    jobs = []
    for job_dir in sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    ):
        sidecars = sorted((job_dir / SAMPLES_DIR).glob("*.json"))
        if not sidecars:
            continue
        meta = read_json(sidecars[0])
        overrides = dict(kv for kv in map(_parse_override, meta.get("overrides", [])) if kv)
        jobs.append({"dir": job_dir, "video": sidecars[0].with_suffix(".mp4"), "overrides": overrides})
    return jobs


def swept_keys(jobs: list[dict]) -> list[str]:
    """The override keys whose values differ between jobs, in command-line order."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job["overrides"] if k not in keys]
    return [k for k in keys if len({job["overrides"].get(k) for job in jobs}) > 1]


def _cell_frames(video: Path, height: int | None = None) -> np.ndarray:
    from cogvid.utils.media import read_mp4  # imports torch: only when a sweep ends

    frames = read_mp4(video)
    picks = sorted({0, len(frames) // 2, len(frames) - 1})
    strip = np.concatenate([frames[i] for i in picks], axis=1)
    if height is not None and strip.shape[0] != height:
        from PIL import Image

        width = round(strip.shape[1] * height / strip.shape[0])
        strip = np.asarray(Image.fromarray(strip).resize((width, height), Image.BILINEAR))
    return strip


def _grid(
    jobs: list[dict], row_key: str | None, col_keys: list[str]
) -> tuple[list[tuple], list[tuple], dict[tuple[int, int], dict]]:
    """The sheet's rows (values of `row_key`) and columns (values of `col_keys`), each in job order, and the job of
    every filled cell by its (row, column) index: the first job with those values."""

    def values(key_list, job):
        return tuple(job["overrides"].get(k) for k in key_list)

    def ordered(items):
        return list(dict.fromkeys(items))

    rows = ordered(values([row_key], j) if row_key else () for j in jobs)
    cols = ordered(values(col_keys, j) for j in jobs)
    grid = {}
    for (r, row), (c, col) in product(enumerate(rows), enumerate(cols)):
        job = next(
            (j for j in jobs if (values([row_key], j) if row_key else ()) == row and values(col_keys, j) == col), None
        )
        if job is not None:
            grid[r, c] = job
    return rows, cols, grid


def _draw_headers(
    draw: Any,
    row_key: str | None,
    rows: list[tuple],
    col_keys: list[str],
    cols: list[tuple],
    *,
    header_w: int,
    step: tuple[int, int],
    cell_h: int,
) -> None:
    """Label every column with its values above the grid and every row with its value at the left."""
    step_w, step_h = step
    for c, col in enumerate(cols):
        draw.text(
            (header_w + c * step_w, 1), " ".join(f"{k}={v}" for k, v in zip(col_keys, col, strict=True)), fill="black"
        )
    if row_key:
        for r, row in enumerate(rows):
            draw.text(
                (PAD, LABEL_HEIGHT + r * step_h + LABEL_HEIGHT + cell_h // 2), f"{row_key}={row[0]}", fill="black"
            )


def make_contact_sheet(sweep_dir: str | Path, max_cell_height: int = 160) -> Path | None:
    """Write `contact_sheet.png` + `.json` for the sweep in `sweep_dir`; None when it holds no videos."""
    from PIL import Image, ImageDraw

    sweep_dir = Path(sweep_dir)
    jobs = sweep_jobs(sweep_dir)
    if not jobs:
        log.warning("no videos under %s: no contact sheet", sweep_dir)
        return None
    keys = swept_keys(jobs)
    row_key, col_keys = (keys[0], keys[1:]) if keys else (None, [])
    rows, cols, grid = _grid(jobs, row_key, col_keys)

    first = _cell_frames(jobs[0]["video"])
    cell_h = min(first.shape[0], max_cell_height)
    strips = {id(job): _cell_frames(job["video"], cell_h) for job in jobs}
    cell_w = max(s.shape[1] for s in strips.values())
    header_w = 8 * max([len(f"{row_key}={r[0]}") for r in rows if row_key] or [0]) + 2 * PAD
    step_w, step_h = cell_w + PAD, cell_h + LABEL_HEIGHT + PAD
    sheet = Image.new("RGB", (header_w + len(cols) * step_w + PAD, LABEL_HEIGHT + len(rows) * step_h + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    cells = []
    for (r, c), job in grid.items():
        x, y = header_w + c * step_w, LABEL_HEIGHT + r * step_h
        label = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in job["overrides"].items() if k in keys) or "job"
        draw.text((x, y + 1), label, fill="black")
        strip = strips[id(job)]
        sheet.paste(Image.fromarray(strip), (x, y + LABEL_HEIGHT))
        cells.append(
            {
                "row": r,
                "col": c,
                "label": label,
                "values": {k: job["overrides"].get(k) for k in keys},
                "video": str(job["video"].relative_to(sweep_dir)),
                "box": [x, y + LABEL_HEIGHT, x + strip.shape[1], y + LABEL_HEIGHT + strip.shape[0]],
            }
        )
    _draw_headers(draw, row_key, rows, col_keys, cols, header_w=header_w, step=(step_w, step_h), cell_h=cell_h)
    png = sweep_dir / "contact_sheet.png"
    write_atomic(png, lambda f: sheet.save(f, format="PNG"))
    index = {"rows": row_key, "columns": col_keys, "cells": cells}
    write_atomic(sweep_dir / "contact_sheet.json", lambda f: f.write(json.dumps(index, indent=2).encode()))
    log.info("contact sheet of %d videos: %s", len(cells), png)
    return png


class ContactSheetCallback(Callback):
    """Hydra callback: after a `-m` sweep, the contact sheet of its videos."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        base = config.infer.get("output_dir") or config.hydra.sweep.dir
        try:
            make_contact_sheet(base)
        except Exception as ex:  # a failed picture must not turn a finished sweep into a failure
            log.warning("could not write the contact sheet in %s: %s", base, ex)
