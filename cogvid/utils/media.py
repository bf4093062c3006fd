"""Pixels in and out: video tensors to uint8 frames, H.264 MP4 files (written atomically), still images.

Video tensors are `(c, f, h, w)` in [-1, 1] (one clip in VAE layout); frames are numpy `(f, h, w, 3)` uint8.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cogvid.utils.errors import CogvidError
from cogvid.utils.files import STORAGE_FULL, atomic_path


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(3, f, h, w) in [-1, 1] -> (f, h, w, 3) uint8: clamped, scaled to [0, 255] and rounded.

    SAT truncates (`(255 x).astype(uint8)`), which darkens every pixel by half a level on average; this rounds.
    """
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a video (3, f, h, w), got {tuple(video.shape)}")
    x = ((video.detach().float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)
    return torch.round(x * 255.0).to(torch.uint8).permute(1, 2, 3, 0).contiguous().numpy()


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int) -> Path:
    """Write (f, h, w, 3) uint8 frames as H.264 / yuv420p MP4 at `fps`; the file appears only when complete."""
    path = Path(path)
    with atomic_path(path) as tmp:
        encode_mp4(tmp, frames, fps)
    return path


def encode_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int) -> None:
    """Encode (f, h, w, 3) uint8 frames as H.264 / yuv420p MP4 at `fps` into `path` (not atomically: see write_mp4).

    The ffmpeg that imageio-ffmpeg ships encodes with libx264's defaults (CRF 23, preset medium). Its exit status is
    checked: a write it could not finish (disk full, file size limit) raises with ffmpeg's reason, where imageio's
    writer used to return and leave a cut-off file. Bytes are reproducible: one encoder thread, and `-bitexact` with
    no metadata keeps version strings and times out of the file. Sizes must be even (yuv420p); cogvid's sizes are
    multiples of 16, so no frame is resized.
    """
    import subprocess

    import imageio_ffmpeg

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (f, h, w, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"H.264 yuv420p needs even sizes, got {frames.shape[1]}x{frames.shape[2]}")
    f, h, w, _ = frames.shape
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        *("-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-"),
        *("-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-threads", "1", "-bitexact", "-map_metadata", "-1"),
        *("-f", "mp4", str(path)),
    ]
    encoder = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = encoder.communicate(np.ascontiguousarray(frames).tobytes())
    except BaseException:  # an interrupt: stop the encoder, the caller deletes the temp file
        encoder.kill()
        encoder.wait()
        raise
    if encoder.returncode != 0:
        reason = " ".join(err.decode("utf-8", "replace").split()) or f"exit status {encoder.returncode}"
        for code in sorted(STORAGE_FULL):
            if os.strerror(code) in reason:  # the storage refused the write: the OSError atomic_path reports
                raise OSError(code, os.strerror(code), str(path))
        raise CogvidError(f"cannot encode {path}: ffmpeg failed ({reason[-300:]})")


def read_mp4(path: str | os.PathLike) -> np.ndarray:
    """All frames of a video file as (f, h, w, 3) uint8."""
    import imageio.v2 as imageio

    try:
        reader = imageio.get_reader(str(path), format="FFMPEG")
        try:
            return np.stack([np.asarray(frame) for frame in reader])
        finally:
            reader.close()
    except (OSError, RuntimeError, ValueError) as ex:
        raise CogvidError(f"cannot read video {path}: {' '.join(str(ex).split())[:200]}") from ex


def read_image(path: str | os.PathLike):
    """An RGB PIL image, or one clear line saying why not."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise CogvidError(f"no image file at {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Image.DecompressionBombError as ex:  # more pixels than Image.MAX_IMAGE_PIXELS allows twice over
        raise CogvidError(f"{path} is too large an image to read safely ({' '.join(str(ex).split())[:160]})") from ex
    except (UnidentifiedImageError, OSError, ValueError) as ex:
        raise CogvidError(f"{path} is not a readable image ({' '.join(str(ex).split())[:160]})") from ex
