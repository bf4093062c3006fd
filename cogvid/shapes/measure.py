"""Read a shapes video's content from its pixels alone: the moving object's colour, shape and direction, and flicker.

Meant for generated clips, which may be noisy or blurry, so every step is robust rather than exact:

1. background: per frame, the median of the border pixels (the object covers at most a small part of the border);
2. detection: a 3x3 box blur, the RGB distance to the background, a threshold that grows with the noise seen on the
   border, a 3x3 opening and the largest 4-connected component;
3. the object's colour: median of the component's inner pixels; each pixel near it is then split between object and
   background by its position along the background -> object colour line, smoothed by [1, 2, 1] / 4 against noise
   (half way = the anti-aliased edge), and the largest component of the object side is the object;
4. colour name: nearest vocabulary hue (on the circle, so red's wrap-around is handled) of the object's colour;
5. direction: least-squares slope of the object's centroid over frames, named by its dominant axis (image rows grow
   downward, so "up" is a decreasing row), and its length over the clip;
6. shape: from frames where the object is wholly inside, the fill of its bounding box (square ~0.97, circle ~0.79,
   triangle ~0.59 on these masks) and how far its centroid sits below the box centre (a triangle, apex up, ~0.135 of
   its height); the nearest prototype, or None when far from all or nearly as close to two;
7. flicker: mean |frame-to-frame change| of pixels away from the object, in 0-255 units;
8. clutter: the share of pixels outside the object's box (grown by CLUTTER_MARGIN_PX) that differ visibly from
   their frame's background (RGB distance over CLUTTER_DISTANCE): ghosts, trails and patches beside the shape.

`found` is False unless at least half the frames (and at least 2) hold an object: noise and blank frames read as
nothing, never as an exception.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cogvid.shapes.dataset import ALL_COLOURS, ALL_SHAPES, DIRECTION_VECTORS, hue_degrees, hue_distance
from cogvid.utils.media import read_mp4

BORDER_PX = 2  # width of the frame border that estimates the background
DETECT_MIN_DISTANCE = 30.0  # least RGB distance (0-255 units, after the blur) that counts as "not background"
DETECT_NOISE_FACTOR = 4.0  # ... and at least this times the median border distance (the noise level)
MIN_AREA_FRACTION = 0.004  # an object covers at least this fraction of the frame (16 pixels at 64x64)
MIN_SATURATION = 0.25  # a less saturated object has no colour name
MIN_DISPLACEMENT_FRACTION = 0.08  # a centroid that moves less (fraction of the frame along its axis) is static
CLUTTER_MARGIN_PX = 3  # the object's box grown by this much is left out of the clutter count
CLUTTER_DISTANCE = 24.0  # RGB distance (0-255 units) from the frame's background that a person sees as a mark
# Shape prototypes in (bounding-box fill, centroid offset below the box centre / box height), with feature scales.
SHAPE_PROTOTYPES: dict[str, tuple[float, float]] = {
    "square": (0.97, 0.0),
    "circle": (0.79, 0.0),
    "triangle": (0.59, 0.135),
}
SHAPE_FEATURE_SCALES = (0.06, 0.04)
MAX_SHAPE_DISTANCE = 2.5  # in feature scales: farther from every prototype reads as no shape
MIN_SHAPE_CONFIDENCE = 0.2

DIRECTION_WORDS = {
    **{d: d for d in DIRECTION_VECTORS},
    **{f"{d}ward": d for d in DIRECTION_VECTORS},
    **{f"{d}wards": d for d in DIRECTION_VECTORS},
}


@dataclass(frozen=True)
class VideoReading:
    """What the pixels of one video say: the moving object (if any), its motion and the flicker."""

    found: bool
    colour: str | None  # vocabulary name, None when not found or not saturated enough
    direction: str | None  # left / right / up / down, None when not found or static
    shape: str | None  # circle / square / triangle, None when not found or unsure
    displacement_px: float  # length of the fitted centroid motion over the whole clip
    flicker: float  # mean |frame-to-frame change| of background pixels, 0-255 units
    shape_confidence: float | None = None  # 0-1: 1 - (distance to best prototype) / (distance to second best)
    velocity_px: tuple[float, float] = (0.0, 0.0)  # fitted centroid (dx, dy) per frame
    hue: float | None = None  # degrees, of the object's median colour
    saturation: float | None = None
    object_rgb: tuple[float, float, float] | None = None
    background_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)  # median over frames
    areas: tuple[int, ...] = ()  # object pixels in each frame (0 where none)
    frames_found: int = 0
    clutter: float = 0.0  # share of the pixels away from the object's box that differ visibly from the background


@dataclass(frozen=True)
class _FrameObject:
    """The object as seen in one frame."""

    mask: np.ndarray  # (H, W) bool, the object's pixels
    rgb: np.ndarray  # (3,) median colour
    centroid: tuple[float, float]  # (x, y) in pixels, pixel i spanning [i, i + 1)


# --- morphology on (..., H, W) bool masks, numpy only ----------------------------------------------------------


def _neighbourhood(mask: np.ndarray, reduce) -> np.ndarray:
    """`reduce` (np.logical_and / np.logical_or) over each pixel's 3x3 neighbourhood in the last two axes, edges
    replicated."""
    out = mask.copy()
    for axis in (-2, -1):  # the 3x3 square is a vertical then a horizontal 3-pixel line
        line = out.copy()
        head, tail = [slice(None)] * mask.ndim, [slice(None)] * mask.ndim
        head[axis], tail[axis] = slice(1, None), slice(None, -1)
        head, tail = tuple(head), tuple(tail)
        reduce(out[head], line[tail], out=out[head])
        reduce(out[tail], line[head], out=out[tail])
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 erosion."""
    return _neighbourhood(mask, np.logical_and)


def _dilate(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """3x3 dilation, `steps` times."""
    for _ in range(steps):
        mask = _neighbourhood(mask, np.logical_or)
    return mask


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of `mask` (all False when empty).

    Each pixel starts labelled with its own index; labels then take the least over 4-neighbours, and jump to the label
    of the pixel they name, until nothing changes: every pixel ends with the least index of its component.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return mask
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    if box[0].stop - box[0].start < mask.shape[0] or box[1].stop - box[1].start < mask.shape[1]:
        out = np.zeros_like(mask)
        out[box] = _largest_component(mask[box])  # the same, on the mask's bounding box
        return out
    none = mask.size  # label of pixels outside the mask; larger than every index
    labels = np.where(mask, np.arange(mask.size, dtype=np.int32).reshape(mask.shape), np.int32(none))
    outside = ~mask
    named = np.full(mask.size + 1, none, dtype=np.int32)  # the labels by pixel index, and `none` for `none`
    while True:
        least = labels.copy()
        np.minimum(least[1:], labels[:-1], out=least[1:])
        np.minimum(least[:-1], labels[1:], out=least[:-1])
        np.minimum(least[:, 1:], labels[:, :-1], out=least[:, 1:])
        np.minimum(least[:, :-1], labels[:, 1:], out=least[:, :-1])
        least[outside] = none
        named[:-1] = least.ravel()
        jumped = named[least]  # the label of the pixel each label names
        if np.array_equal(jumped, labels):
            return labels == np.bincount(labels[mask]).argmax()
        labels = jumped


def _box_blur(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, C) -> the same, each pixel the mean of its 3x3 neighbourhood (edges replicated)."""
    _, h, w, _ = frames.shape
    padded = np.pad(frames, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return sum(padded[:, dy : dy + h, dx : dx + w] for dy in (0, 1, 2) for dx in (0, 1, 2)) / 9.0


def _binomial_blur(image: np.ndarray) -> np.ndarray:
    """(H, W) -> the same, smoothed by the separable [1, 2, 1] / 4 kernel (edges replicated): noise / 2.7."""
    padded = np.pad(image, 1, mode="edge")
    rows = (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4
    return (rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]) / 4


def _border(frames: np.ndarray, width: int) -> np.ndarray:
    """(F, H, W[, C]) -> (F, n[, C]): the pixels of each frame's `width`-pixel border."""
    edge = np.zeros(frames.shape[1:3], dtype=bool)
    edge[:width], edge[-width:], edge[:, :width], edge[:, -width:] = True, True, True, True
    return frames[:, edge]


# --- reading one video -----------------------------------------------------------------------------------------


def _find_object(
    frame: np.ndarray, detected: np.ndarray, background: np.ndarray, threshold: float, min_area: int
) -> _FrameObject | None:
    """The object in one frame (H, W, 3) float, or None; `detected` (H, W) marks pixels unlike `background` (3,)."""
    component = _largest_component(detected)
    if component.sum() < min_area:
        return None
    # Work on the component's bounding box plus 3 pixels: everything below looks at most 3 pixels beyond it.
    rows, cols = np.flatnonzero(component.any(axis=1)), np.flatnonzero(component.any(axis=0))
    box = (slice(max(rows[0] - 3, 0), rows[-1] + 4), slice(max(cols[0] - 3, 0), cols[-1] + 4))
    component, pixels = component[box], frame[box]
    inner = _erode(component)
    rgb = np.median(pixels[inner if inner.sum() >= min_area // 2 else component], axis=0)  # (3,)
    contrast = rgb - background
    if np.linalg.norm(contrast) <= threshold:
        return None
    # Position of each pixel along the background -> object line: 0 background, 1 object, 0.5 the edge.
    along = (pixels - background) @ contrast / float(contrast @ contrast)  # (h, w)
    object_pixels = _largest_component((_binomial_blur(along) > 0.5) & _dilate(component, 2))
    if object_pixels.sum() < min_area:
        return None
    mask = np.zeros(frame.shape[:2], dtype=bool)
    mask[box] = object_pixels
    rows, cols = np.nonzero(mask)
    return _FrameObject(mask, rgb, (float(cols.mean()) + 0.5, float(rows.mean()) + 0.5))


def _shape_features(mask: np.ndarray) -> tuple[float, float] | None:
    """(bounding-box fill, centroid offset below the box centre / box height), or None if the mask meets the edge."""
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    h, w = mask.shape
    if top == 0 or left == 0 or bottom == h - 1 or right == w - 1:
        return None
    box_h, box_w = bottom - top + 1, right - left + 1
    fill = rows.size / float(box_h * box_w)
    offset = (rows.mean() + 0.5 - (top + bottom + 1) / 2.0) / box_h
    return fill, float(offset)


def _classify_shape(features: list[tuple[float, float]]) -> tuple[str | None, float | None]:
    """(shape, confidence) from per-frame features; (None, confidence or None) when unsure."""
    if not features:
        return None, None
    fill, offset = np.median(np.asarray(features), axis=0)
    distances = {
        name: math.hypot((fill - f) / SHAPE_FEATURE_SCALES[0], (offset - o) / SHAPE_FEATURE_SCALES[1])
        for name, (f, o) in SHAPE_PROTOTYPES.items()
    }
    best, second = sorted(distances, key=distances.get)[:2]
    confidence = 1.0 - distances[best] / max(distances[second], 1e-9)
    if distances[best] > MAX_SHAPE_DISTANCE or confidence < MIN_SHAPE_CONFIDENCE:
        return None, confidence
    return best, confidence


def colour_name(rgb: tuple[float, float, float]) -> tuple[str | None, float, float]:
    """(nearest vocabulary colour by hue or None if unsaturated, hue in degrees, HSV saturation) of an RGB."""
    hi, lo = max(rgb), min(rgb)
    saturation = (hi - lo) / hi if hi > 0 else 0.0
    hue = hue_degrees(rgb)
    if saturation < MIN_SATURATION:
        return None, hue, saturation
    name = min(ALL_COLOURS, key=lambda c: hue_distance(hue, hue_degrees(ALL_COLOURS[c])))
    return name, hue, saturation


def _direction(centroids: list[tuple[int, float, float]], frames: int, height: int, width: int):
    """(direction or None, displacement over the clip in pixels, (dx, dy) per frame) from (frame, x, y) centroids."""
    t, x, y = (np.asarray(v, dtype=np.float64) for v in zip(*centroids, strict=True))
    t = t - t.mean()
    denominator = float(t @ t)
    vx, vy = float(t @ (x - x.mean()) / denominator), float(t @ (y - y.mean()) / denominator)
    span = frames - 1
    displacement = math.hypot(vx, vy) * span
    if abs(vx) >= abs(vy):
        name, moved = ("right" if vx > 0 else "left"), abs(vx) * span / width
    else:
        name, moved = ("down" if vy > 0 else "up"), abs(vy) * span / height
    return (name if moved >= MIN_DISPLACEMENT_FRACTION else None), displacement, (vx, vy)


def _flicker(frames: np.ndarray, masks: list[np.ndarray]) -> float:
    """Mean |frame-to-frame change| (0-255) of pixels at least 2 pixels away from the object in both frames."""
    if len(frames) < 2:
        return 0.0
    away = np.stack([~_dilate(m, 2) for m in masks])  # (F, H, W)
    keep = away[1:] & away[:-1]  # (F - 1, H, W)
    change = np.abs(frames[1:] - frames[:-1]).mean(axis=-1)  # (F - 1, H, W)
    kept = keep.sum(axis=(1, 2))
    per_pair = (change * keep).sum(axis=(1, 2))[kept > 0] / kept[kept > 0]
    return float(per_pair.mean()) if per_pair.size else 0.0


def _clutter(frames: np.ndarray, backgrounds: np.ndarray, masks: list[np.ndarray]) -> float:
    """Mean over frames of the share of pixels outside the object's grown box (every pixel of a frame without an
    object) farther than CLUTTER_DISTANCE from the frame's background: (F, H, W, 3), (F, 3), F x (H, W) -> 0-1."""
    n, h, w, _ = frames.shape
    marked = np.linalg.norm(frames - backgrounds[:, None, None], axis=-1) > CLUTTER_DISTANCE  # (F, H, W)
    away = np.ones((n, h, w), dtype=bool)
    for f, mask in enumerate(masks):
        rows, cols = np.nonzero(mask)
        if rows.size:
            m = CLUTTER_MARGIN_PX
            away[f, max(0, rows.min() - m) : rows.max() + m + 1, max(0, cols.min() - m) : cols.max() + m + 1] = False
    return float((marked & away).sum(axis=(1, 2)).sum() / max(1, away.sum()))


def _detect(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(backgrounds (F, 3), detected (F, H, W) bool, threshold) of float frames (F, H, W, 3): each frame's background
    is the median of its border; a pixel is detected when its blurred colour is farther from it than the threshold
    (at least DETECT_MIN_DISTANCE, else a multiple of the border's own noise), then opened (specks of noise gone)."""
    backgrounds = np.median(_border(x, BORDER_PX), axis=1)  # (F, 3)
    smooth = _box_blur(x)
    distance = np.linalg.norm(smooth - backgrounds[:, None, None], axis=-1)  # (F, H, W)
    threshold = max(DETECT_MIN_DISTANCE, DETECT_NOISE_FACTOR * float(np.median(_border(distance, BORDER_PX))))
    return backgrounds, _dilate(_erode(distance > threshold)), threshold


def measure_video(frames: np.ndarray) -> VideoReading:
    """Read (F, H, W, 3) uint8 frames: background, the moving object's colour, shape and direction, and flicker."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"expected (frames, height, width, 3) frames, got {frames.shape}")
    n, h, w, _ = frames.shape
    x = frames.astype(np.float64)  # (F, H, W, 3)
    backgrounds, detected, threshold = _detect(x)
    min_area = max(4, int(MIN_AREA_FRACTION * h * w))

    objects = [_find_object(x[f], detected[f], backgrounds[f], threshold, min_area) for f in range(n)]
    empty = np.zeros((h, w), dtype=bool)
    masks = [o.mask if o is not None else empty for o in objects]
    seen = [(f, o) for f, o in enumerate(objects) if o is not None]
    frames = {  # what is read whether or not an object was found
        "flicker": _flicker(x, masks),
        "background_rgb": tuple(float(v) for v in np.median(backgrounds, axis=0)),
        "areas": tuple(int(m.sum()) for m in masks),
        "frames_found": len(seen),
        "clutter": _clutter(x, backgrounds, masks),
    }
    if len(seen) < max(2, math.ceil(n / 2)):
        return VideoReading(found=False, colour=None, direction=None, shape=None, displacement_px=0.0, **frames)

    object_rgb = tuple(float(v) for v in np.median(np.stack([o.rgb for _, o in seen]), axis=0))
    colour, hue, saturation = colour_name(object_rgb)
    direction, displacement, velocity = _direction([(f, *o.centroid) for f, o in seen], n, h, w)
    features = [feat for _, o in seen if (feat := _shape_features(o.mask)) is not None]
    shape, confidence = _classify_shape(features)
    return VideoReading(
        found=True,
        colour=colour,
        direction=direction,
        shape=shape,
        displacement_px=displacement,
        shape_confidence=confidence,
        velocity_px=velocity,
        hue=hue,
        saturation=saturation,
        object_rgb=object_rgb,
        **frames,
    )


def measure_video_file(path: str | Path) -> VideoReading:
    """`measure_video` of the frames of a video file."""
    return measure_video(read_mp4(path))


# --- prompts and scores ----------------------------------------------------------------------------------------


def parse_caption(text: str) -> tuple[str, str, str] | None:
    """(colour, shape, direction) named by a caption ("a red circle moving left", "a small blue square slides up",
    "a green triangle moves to the right"), or None unless it names exactly one of each."""
    words = re.findall(r"[a-z]+", text.lower())
    colours = {word for word in words if word in ALL_COLOURS}
    shapes = {word for word in words if word in ALL_SHAPES}
    directions = {DIRECTION_WORDS[word] for word in words if word in DIRECTION_WORDS}
    if len(colours) != 1 or len(shapes) != 1 or len(directions) != 1:
        return None
    return colours.pop(), shapes.pop(), directions.pop()


def score(reading: VideoReading, expected: tuple[str, str, str]) -> dict[str, bool]:
    """Which parts of `expected` (colour, shape, direction) the reading agrees with, and whether all do."""
    colour, shape, direction = expected
    result = {
        "found": reading.found,
        "colour": reading.found and reading.colour == colour,
        "shape": reading.found and reading.shape == shape,
        "direction": reading.found and reading.direction == direction,
    }
    result["all"] = result["colour"] and result["shape"] and result["direction"]
    return result
