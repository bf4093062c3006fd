"""What `cogvid-sample` writes: `<out>/samples/<index>_<slug>.mp4` with a `.json` sidecar (and latents and a PNG frame
strip on request).

The slug is made from the prompt with only `[a-z0-9_]`, so no prompt can name a path outside the output dir; the
index in front keeps two videos of one prompt, or two prompts with the same slug, apart. A run into a dir that
already holds videos numbers its own after the highest index there (`next_free_index`), so no finished video is
ever replaced; the seed of a video still depends only on its position in its own run (`infer.seed + i`). Every file is
written under a temporary name and renamed, so an interrupted run leaves no half video.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import unicodedata
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save

from cogvid.inference.frame_strip import frame_strip
from cogvid.utils.errors import CogvidError
from cogvid.utils.files import atomic_path, clean_stale, owner_tag
from cogvid.utils.media import encode_mp4

SLUG_LENGTH = 60
SAMPLES_DIR = "samples"


def slug(prompt: str, max_length: int = SLUG_LENGTH) -> str:
    """A file-name-safe short form of a prompt: ASCII letters and digits joined by '_', at most max_length."""
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii").lower()
    words = re.sub(r"[^a-z0-9]+", "_", ascii_text).strip("_")
    return words[:max_length].rstrip("_") or "video"


def video_stem(index: int, prompt: str) -> str:
    return f"{index:04d}_{slug(prompt)}"


STEM_INDEX = re.compile(r"^(\d{4,})_")


def next_free_index(samples_dir: Path) -> int:
    """1 + the highest `<index>_` prefix among the files in `samples_dir` (0 when it holds none)."""
    if not samples_dir.is_dir():
        return 0
    found = [int(m.group(1)) for p in samples_dir.iterdir() if (m := STEM_INDEX.match(p.name))]
    return max(found) + 1 if found else 0


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
    stem: str,
    frames: np.ndarray,
    fps: int,
    sidecar: dict,
    latents: torch.Tensor | None = None,
    strip_caption: str | None = None,
) -> list[Path]:
    """Write `<stem>.mp4`, optional `<stem>.latents.safetensors` and `<stem>.png` (a frame strip under
    `strip_caption`), and `<stem>.json`, as one step: every file is written under its temp name first and renamed
    only when all are written (the JSON last: it marks completion), so a failed write (disk full) leaves none."""
    from PIL import Image

    text = json.dumps(sidecar, indent=2, ensure_ascii=False, default=str) + "\n"
    with contextlib.ExitStack() as stack:

        def staged(suffix: str) -> Path:
            return stack.enter_context(atomic_path(samples_dir / f"{stem}{suffix}"))

        sidecar_tmp = staged(".json")  # entered first, so renamed last
        encode_mp4(staged(".mp4"), frames, fps)
        written = [samples_dir / f"{stem}.mp4"]
        if strip_caption is not None:
            Image.fromarray(frame_strip(frames, strip_caption)).save(staged(".png"), format="PNG")
            written.append(samples_dir / f"{stem}.png")
        if latents is not None:
            tensors = {"latents": latents.detach().float().cpu().contiguous()}
            staged(".latents.safetensors").write_bytes(
                save(tensors, metadata={"layout": "b c t h w", "scaled": "false"})
            )
            written.append(samples_dir / f"{stem}.latents.safetensors")
        sidecar_tmp.write_bytes(text.encode("utf-8"))
    return [*written, samples_dir / f"{stem}.json"]


def finished_videos(samples_dir: Path, settings_hash: str) -> set[tuple[str, str | None, int]]:
    """(prompt, image, seed) of every finished video in `samples_dir` made with these settings (`settings_hash` in its
    sidecar): what infer.resume skips. A video is finished when its JSON sidecar is there (it is renamed last) and
    its MP4 beside it; a sidecar that is not JSON is no finished video."""
    done = set()
    if not samples_dir.is_dir():
        return done
    for sidecar in samples_dir.glob("*.json"):
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict) or meta.get("settings_hash") != settings_hash:
            continue
        if sidecar.with_suffix(".mp4").is_file():
            done.add((meta.get("prompt"), meta.get("image"), meta.get("seed")))
    return done
