"""What `cogvid-sample` writes: `<out>/samples/<index>_<slug>.mp4` with a `.json` sidecar (and latents and a PNG frame
strip on request).

The slug is made from the prompt with only `[a-z0-9_]`, so no prompt can name a path outside the output dir; the
index in front keeps two videos of one prompt, or two prompts with the same slug, apart.

Names are claimed, never replaced (`cogvid.utils.numbered_names`). A finished video's files are written under temp
names first; then, holding the folder's lock, the writer takes the first index from its wanted one on that no file in
the folder starts with, and gives every file its final name with a rename that fails when the name exists. So any
number of runs writing into one folder at once (separate runs, the jobs of a sweep, torchrun ranks) each keep every
video, whole, under an index of its own, whatever their prompts; a video whose index was taken meanwhile moves on to
the next free one. The MP4, PNG and latents of one video take one index together, the JSON last (it marks
completion), so an interrupted run leaves no half video under a final name. The wanted index is the run's start
(after the highest index in the folder, a hint) plus the video's position in the run; the seed (`infer.seed + i`) and
the sidecar's "index" are the position, so they never depend on what else is in the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cogvid.interop.tensor_io import safetensors_bytes
from cogvid.utils.errors import CogvidError
from cogvid.utils.files import clean_stale, fsync_path, owner_tag, temp_name, writing
from cogvid.utils.media import encode_mp4
from cogvid.utils.numbered_names import INDEX_PREFIX, claim_first_free, next_free_index

SLUG_LENGTH = 60
SAMPLES_DIR = "samples"


def slug(prompt: str, max_length: int = SLUG_LENGTH) -> str:
    """A file-name-safe short form of a prompt: ASCII letters and digits joined by '_', at most max_length."""
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii").lower()
    words = re.sub(r"[^a-z0-9]+", "_", ascii_text).strip("_")
    return words[:max_length].rstrip("_") or "video"


def video_stem(index: int, prompt: str) -> str:
    return f"{index:04d}_{slug(prompt)}"


def config_hash(resolved: dict) -> str:
    """A short hash of everything that shapes the output (the resolved config, as canonical JSON)."""
    text = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_writable(out_dir: Path) -> Path:
    """`out_dir/samples`, proved writable before any model is loaded but not created (the first video makes it, so a
    run refused later leaves no empty folder): the nearest folder on the way that exists must be writable. In an
    existing samples folder the temp files of killed runs are removed and a probe file is written."""
    samples = out_dir / SAMPLES_DIR
    existing = next(p for p in (samples, *samples.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise CogvidError(f"infer.output_dir: cannot write to {samples} ({existing} is not a writable folder)")
    if existing == samples:
        try:
            clean_stale(samples)
            probe = samples / f".write-test.tmp-{owner_tag()}"  # a killed run's probe is a leftover clean_stale knows
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as ex:
            raise CogvidError(f"infer.output_dir: cannot write to {samples} ({ex.strerror or ex})") from None
    return samples


def write_sample(
    samples_dir: Path,
    index: int,
    prompt: str,
    frames: np.ndarray,
    fps: int,
    sidecar: dict,
    latents: torch.Tensor | None = None,
    strip: np.ndarray | None = None,
) -> list[Path]:
    """Write one video as `<i>_<slug(prompt)>.mp4`, optional `.latents.safetensors` and `.png` (`strip`, a frame strip
    image), and `.json`, where `i` is the first free index from `index` on (`claim_first_free`): every file is
    written under its temp name first and claims its name only when all are written, so a failed write (disk full)
    leaves none. Returns the final paths, the JSON last."""
    from PIL import Image

    text = json.dumps(sidecar, indent=2, ensure_ascii=False, default=str) + "\n"
    stem = video_stem(index, prompt)
    samples_dir.mkdir(parents=True, exist_ok=True)
    staged: dict[str, Path] = {}

    @contextlib.contextmanager
    def stage(suffix: str) -> Iterator[Path]:  # a storage failure names the file's own final name
        target = samples_dir / f"{stem}{suffix}"
        staged[suffix] = temp_name(target)
        with writing(target):
            yield staged[suffix]
            fsync_path(staged[suffix])

    try:
        with stage(".mp4") as tmp:
            encode_mp4(tmp, frames, fps)
        if strip is not None:
            with stage(".png") as tmp:
                Image.fromarray(strip).save(tmp, format="PNG")
        if latents is not None:
            with stage(".latents.safetensors") as tmp:
                tensors = {"latents": latents.detach().float().cpu().contiguous()}
                tmp.write_bytes(safetensors_bytes(tensors, {"layout": "b c t h w", "scaled": "false"}))
        with stage(".json") as tmp:
            tmp.write_bytes(text.encode("utf-8"))
        with writing(samples_dir / f"{stem}.json"):
            return claim_first_free(samples_dir, index, lambda i: video_stem(i, prompt), staged)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)


def finished_videos(samples_dir: Path, settings_hash: str) -> dict[tuple[str, str | None, int], int]:
    """(prompt, image, seed) -> the first file index of the run that made it, for every finished video in
    `samples_dir` made with these settings (`settings_hash` in its sidecar): what infer.resume skips, and where the
    run it resumes numbered from (its file index less its place in that run, the sidecar's "index"). A video is
    finished when its JSON sidecar is there (it takes its name last) and its MP4 beside it; a sidecar that is not
    JSON is no finished video."""
    done = {}
    if not samples_dir.is_dir():
        return done
    for sidecar in samples_dir.glob("*.json"):
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict) or meta.get("settings_hash") != settings_hash:
            continue
        number = INDEX_PREFIX.match(sidecar.name)
        if number and sidecar.with_suffix(".mp4").is_file() and isinstance(meta.get("index"), int):
            done[(meta.get("prompt"), meta.get("image"), meta.get("seed"))] = int(number.group(1)) - meta["index"]
    return done


@dataclass(frozen=True)
class SamplesFolder:
    """What a run finds in its samples folder before it makes anything (`survey_samples`)."""

    path: Path  # <output_dir>/samples, proved writable (made by the first video)
    first_index: int  # where the run starts numbering: after the highest index there (a hint, see the module doc)
    finished: dict[tuple[str, str | None, int], int]  # infer.resume: `finished_videos` (else empty)


def survey_samples(out_dir: Path, settings_hash: str, resume: bool) -> SamplesFolder:
    """The samples folder of `out_dir`: the finished videos a resumed run skips (made with these settings), its
    writability (`check_writable`) and the first free index."""
    samples = out_dir / SAMPLES_DIR
    finished = finished_videos(samples, settings_hash) if resume else {}
    check_writable(out_dir)
    return SamplesFolder(samples, next_free_index(samples), finished)
