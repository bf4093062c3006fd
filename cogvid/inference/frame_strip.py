"""A frame strip: one video's frames side by side under a caption line, as one PNG that reads on a page.

`cogvid-sample infer.frame_strip=true` writes `<stem>.png` beside every `<stem>.mp4` (the prompt is the caption);
`make demo` and the README show one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cogvid.utils.files import write_atomic

GAP = 2  # white pixels between frames and around the strip
CAPTION_HEIGHT = 18
MIN_FRAME_HEIGHT = 128  # smaller frames are enlarged by a whole factor (nearest neighbour: no new colours)


def strip_frames(num_frames: int, max_frames: int) -> list[int]:
    """Indices of at most `max_frames` frames spread evenly from the first to the last."""
    if num_frames <= max_frames:
        return list(range(num_frames))
    return sorted({round(i * (num_frames - 1) / (max_frames - 1)) for i in range(max_frames)})


def frame_strip(frames: np.ndarray, caption: str | None = None, max_frames: int = 9) -> np.ndarray:
    """(f, h, w, 3) uint8 frames -> one (H, W, 3) uint8 picture: up to `max_frames` of them left to right, enlarged
    to at least MIN_FRAME_HEIGHT, under `caption`."""
    from PIL import Image, ImageDraw

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (f, h, w, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    picks = strip_frames(frames.shape[0], max_frames)
    scale = max(1, -(-MIN_FRAME_HEIGHT // frames.shape[1]))
    h, w = frames.shape[1] * scale, frames.shape[2] * scale
    top = CAPTION_HEIGHT if caption else GAP
    sheet = Image.new("RGB", (GAP + len(picks) * (w + GAP), top + h + GAP), "white")
    for k, i in enumerate(picks):
        frame = frames[i].repeat(scale, axis=0).repeat(scale, axis=1)
        sheet.paste(Image.fromarray(frame), (GAP + k * (w + GAP), top))
    if caption:
        ImageDraw.Draw(sheet).text((GAP + 2, 3), caption, fill="black")
    return np.asarray(sheet)


def write_frame_strip(path: str | Path, frames: np.ndarray, caption: str | None = None, max_frames: int = 9) -> Path:
    """Write `frame_strip(frames, caption)` as a PNG at `path` (atomically)."""
    from PIL import Image

    picture = Image.fromarray(frame_strip(frames, caption, max_frames))
    path = Path(path)
    write_atomic(path, lambda f: picture.save(f, format="PNG"))
    return path
