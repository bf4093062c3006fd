"""The source clip of video to video (SDEdit, `infer.video`): read and cut as training reads its clips.

The clip is resampled to the rate the result is written at (infer.fps, else the variant's), cut to infer.num_frames
frames and cover-resized + centre-cropped to the sampled size, by the training reader (`cogvid.training.data`:
`frame_indices`, `read_frames`, `resize_cover_center_crop`), so a clip means the same to sampling as to training.
Unlike training, a clip too short for the frame count is refused, not padded with its last frame: the result would
stand still where the source ran out.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from cogvid.inference.video_shape import FRAME_STEP, VideoShape
from cogvid.training.data import BadVideo, ClipSpec, frame_indices, probe, read_frames, resize_cover_center_crop
from cogvid.utils.errors import CogvidError


def read_source_video(cfg, shape: VideoShape) -> torch.Tensor:
    """infer.video as (3, F, H, W) float32 in [-1, 1] at the result's rate, frame count and size, or one line."""
    option = f"infer.video={cfg.infer.video}"  # its model takes no image: config.checks.check_values
    path = Path(str(cfg.infer.video)).expanduser()
    fps = int(cfg.infer.fps or cfg.model.default_fps)
    # min_num_frames 1: frame_indices gives what the clip has; fewer than num_frames is refused below, with advice.
    spec = ClipSpec(shape.height, shape.width, fps, shape.num_frames, skip_frms_num=0, min_num_frames=1)
    try:
        n, fps_src = probe(path)
        indices = frame_indices(n, fps_src, spec)
        if len(indices) < shape.num_frames:
            raise CogvidError(_too_short(option, n, fps_src, shape.num_frames, fps))
        frames = torch.from_numpy(read_frames(path, indices)).permute(0, 3, 1, 2)  # (F, 3, h, w) uint8
    except BadVideo as ex:
        reason = re.sub(r"\[Errno -?\d+\] ", "", str(ex))  # PyAV's error numbers say nothing to a user
        raise CogvidError(f"{option} is not a readable video ({reason})") from None
    clip = resize_cover_center_crop(frames, shape.height, shape.width)  # (F, 3, H, W) in [0, 255]
    return (clip / 127.5 - 1.0).permute(1, 0, 2, 3).contiguous()


def _too_short(option: str, n: int, fps_src: float, num_frames: int, fps: int) -> str:
    """The refusal of a clip with fewer frames than infer.num_frames, naming what would work.

    Any clip of num_frames frames or more gives num_frames (frame_indices strides over a longer or faster one), and
    one of num_frames / fps seconds or more keeps its speed.
    """
    what = "a single frame (a still image?)" if n == 1 else f"{n} frames at {fps_src:g} fps"
    fewer = (n - 1) // FRAME_STEP * FRAME_STEP + 1  # the largest 8k+1 frame count the clip can fill
    return (
        f"{option} holds {what}, fewer than infer.num_frames={num_frames}: give a clip of at least {num_frames} "
        f"frames ({num_frames / fps:.2f} s at {fps} fps), or infer.num_frames={fewer}"
    )
