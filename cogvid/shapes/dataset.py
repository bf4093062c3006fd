"""Synthetic "shapes" clips in SAT's layout: one solid shape sliding in a straight line over a plain background.

    OUT/videos/<name>.mp4    H.264, `frames` frames of `height` x `width` at `fps`
    OUT/labels/<name>.txt    its caption (one line), e.g. "a red circle moving left"
    OUT/dataset.json         seed, geometry, counts, the held-out combinations and every clip's spec

Everything is a function of the seed: clip `i` draws from `numpy.random.default_rng([seed, i])`, the combinations
cycle through seeded shuffles of `training_combinations()` (so every one appears once per 63 clips), and the MP4
writer is bit-exact, so one seed always gives byte-identical files.

Background rule: a grey of HSV value 0.12-0.88 tinted by at most 0.22 saturation (every shape colour has >= 0.7),
kept only if it is at least MIN_BACKGROUND_DISTANCE from the shape colour in RGB (0-255 units) and, when visibly
tinted (saturation >= 0.08), at least MIN_BACKGROUND_HUE_DEGREES from the shape's hue; else drawn again.

Held-out rule: HELD_OUT triples never appear in training, but each of their (colour, shape), (colour, direction)
and (shape, direction) pairs does, so a model can only get them right by composing what it saw.
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cogvid.utils.errors import CogvidError
from cogvid.utils.files import write_atomic
from cogvid.utils.media import write_mp4

log = logging.getLogger(__name__)

# Saturated colours with well-separated hues (degrees in comments); the measurer names a colour by nearest hue.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),  # 0
    "orange": (245, 135, 20),  # 31
    "yellow": (235, 220, 30),  # 56
    "green": (40, 180, 60),  # 129
    "blue": (40, 90, 230),  # 224
    "purple": (150, 60, 210),  # 276
}
SHAPES = ("circle", "square", "triangle")
# Words the shapes tokenizer knows but no base training caption uses: the base model has their tokens and never
# learned what they mean, so a LoRA can teach them (cogvid.shapes.lora_data). Cyan's hue (~183 degrees) lies between
# green's and blue's; a ring is a hollow circle.
RESERVED_COLOURS: dict[str, tuple[int, int, int]] = {"cyan": (30, 200, 210)}
RESERVED_SHAPES = ("ring",)
RING_INNER = 0.55  # a ring's inner diameter / its outer diameter
ALL_COLOURS = {**COLOURS, **RESERVED_COLOURS}  # what the renderer draws and the measurer names
ALL_SHAPES = SHAPES + RESERVED_SHAPES
DIRECTIONS = ("left", "right", "up", "down")
# (dx, dy) in image coordinates: y grows downward, so "up" decreases the row.
DIRECTION_VECTORS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

# Never in training. ("red", "circle", "right") is the demo prompt, so it is trained on.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "square", "up"),
    ("red", "triangle", "left"),
    ("orange", "circle", "down"),
    ("yellow", "square", "right"),
    ("yellow", "triangle", "up"),
    ("green", "circle", "left"),
    ("blue", "triangle", "down"),
    ("blue", "circle", "right"),
    ("purple", "square", "down"),
)

# Shapes fill a large part of the frame so that each spans several latent pixels (the VAE compresses 8x in space):
# at 64x64 a shape is 23-32 pixels wide, 3-4 latents. Version 1 of the data drew 0.20-0.34 (13-22 pixels, about two
# latents) and its VAE and DiT drew every shape as the same blob.
SIZE_RANGE = (0.36, 0.50)  # shape extent (circle diameter, square side, triangle base = height) / min(height, width)
SPEED_RANGE = (0.22, 0.40)  # distance the centre travels over the clip / frame extent along the motion
MARGIN = 0.04  # gap kept between the shape and the frame edge, as a fraction of the frame
# Where a path lies (`Placement`). `anywhere` (the default; the VAE's clips, and the DiT's up to version 3): the path
# may lie anywhere in the frame. `centred`: the middle of the path is the frame's centre, give or take CENTRED_JITTER (a
# fraction of the frame), at a speed in CENTRED_SPEED_RANGE, so the caption alone tells where the shape is in every
# frame. A DiT trained on centred clips reads the shape word 10x more (the loss of a wrong shape word rises 13-31 %
# at middle and high noise, against 0.5-2 % when drawn anywhere), but its samples were still blobs after 3000 steps
# (docs/shapes.md).
CENTRED_JITTER = 0.04
CENTRED_SPEED_RANGE = (0.28, 0.34)
# `fixed` (the shipped model's DiT clips, version 7): the caption fixes the whole clip but its background. The path is
# centred with no jitter at FIXED_SPEED, and the size is FIXED_SIZES["plain"] unless the caption says "small" or
# "large" (each FIXED_SIZE_WORD_P of the clips; `caption` names them from SMALL_BELOW / LARGE_ABOVE).
# Anything a caption leaves open, a small DiT draws as the mean over it: sizes, places and speeds that vary under one
# caption average into one soft blob whatever the shape.
FIXED_SPEED = 0.31
FIXED_SIZES = {"plain": 0.44, "small": 0.38, "large": 0.50}
FIXED_SIZE_WORD_P = 0.1
SMALL_BELOW, LARGE_ABOVE = 0.4067, 0.4533  # sizes a paraphrase may call "small" / "large" (outer thirds of SIZE_RANGE)
SUPERSAMPLE = 4  # anti-aliasing: coverage is the mean of SUPERSAMPLE x SUPERSAMPLE samples per pixel

BACKGROUND_VALUE_RANGE = (0.12, 0.88)
BACKGROUND_MAX_SATURATION = 0.22
BACKGROUND_TINT_SATURATION = 0.08  # from here on a background's hue counts
MIN_BACKGROUND_DISTANCE = 120.0
MIN_BACKGROUND_HUE_DEGREES = 60.0

PARAPHRASE_P = 0.3
# Captions before their article ("a", or "an" before a vowel: "an orange square moving up").
PLAIN_CAPTION = "{colour} {shape} moving {direction}"
PARAPHRASES = (
    "{size}{colour} {shape} moves {toward}",
    "{size}{colour} {shape} slides {direction}",
    "{size}{colour} {shape} sliding {toward}",
    "{size}{colour} {shape} drifts {direction}",
    "{size}{colour} {shape} travelling {toward}",
)
TOWARD = {"left": "to the left", "right": "to the right", "up": "upward", "down": "downward"}

DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH, DEFAULT_FPS = 9, 64, 64, 8


class Placement(str, Enum):
    """Where a clip's path lies: `anywhere` in the frame, `centred` (see CENTRED_JITTER), or `fixed` by the caption
    (see FIXED_SPEED)."""

    centred = "centred"
    anywhere = "anywhere"
    fixed = "fixed"


@dataclass(frozen=True)
class Vocabulary:
    """The words a caption is made of: colour names (with their RGB), shape names, direction names."""

    colours: dict[str, tuple[int, int, int]]
    shapes: tuple[str, ...]
    directions: tuple[str, ...]


@dataclass(frozen=True)
class ShapeClip:
    """One clip: which shape moves where, over which background, at which geometry."""

    colour: str
    shape: str
    direction: str
    size: float  # extent / min(height, width), see SIZE_RANGE
    speed: float  # travel of the centre over the whole clip / frame extent along the motion
    start: tuple[float, float]  # centre (x, y) at the first frame, as fractions of (width, height)
    background: tuple[int, int, int]  # RGB
    frames: int = DEFAULT_FRAMES
    height: int = DEFAULT_HEIGHT
    width: int = DEFAULT_WIDTH


@dataclass(frozen=True)
class PlannedClip:
    """One clip of a dataset before it is written: its file stem, what it shows and its caption."""

    name: str
    spec: ShapeClip
    caption: str


@dataclass(frozen=True)
class DatasetSummary:
    """What `write_dataset` wrote: where, how many clips, and how often each word appears."""

    out: Path
    num_clips: int
    colours: dict[str, int]
    shapes: dict[str, int]
    directions: dict[str, int]
    paraphrased: int
    held_out: list[tuple[str, str, str]]


def vocabulary() -> Vocabulary:
    """The colours, shapes and directions of the dataset."""
    return Vocabulary(dict(COLOURS), SHAPES, DIRECTIONS)


def held_out_combinations() -> list[tuple[str, str, str]]:
    """(colour, shape, direction) triples that never appear in training."""
    return list(HELD_OUT)


def reserved_combinations(colour: str | None = None, shape: str | None = None) -> list[tuple[str, str, str]]:
    """Every (colour, shape, direction) with the reserved `colour` (any base shape) or the reserved `shape` (any
    base colour): what a LoRA that teaches that word trains on and is measured with."""
    colours = [colour] if colour else list(COLOURS)
    shapes = [shape] if shape else list(SHAPES)
    return [(c, s, d) for c in colours for s in shapes for d in DIRECTIONS]


def pixel_combinations() -> list[tuple[str, str, str]]:
    """Every (colour, shape, direction) the renderer draws, reserved words and held-out triples included: what a VAE
    trains on. A VAE never reads captions, so it learns the pixels of every colour and shape (as a real VAE is
    trained on all images); only the DiT is kept from the reserved words and the held-out triples."""
    return [(c, s, d) for c in ALL_COLOURS for s in ALL_SHAPES for d in DIRECTIONS]


def training_combinations() -> list[tuple[str, str, str]]:
    """Every (colour, shape, direction) triple except the held-out ones, in vocabulary order."""
    held = set(HELD_OUT)
    return [(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS if (c, s, d) not in held]


def hue_degrees(rgb: tuple[float, float, float]) -> float:
    """HSV hue in [0, 360) of an RGB colour in 0-255 units."""
    return 360.0 * colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))[0]


def hue_distance(a: float, b: float) -> float:
    """Angle in degrees between two hues, going the short way round (0-180)."""
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def background_is_distinct(background: tuple[int, int, int], colour: str) -> bool:
    """Whether `background` satisfies the background rule for a shape of `colour` (see the module docstring)."""
    rgb = ALL_COLOURS[colour]
    if float(np.linalg.norm(np.subtract(background, rgb, dtype=float))) < MIN_BACKGROUND_DISTANCE:
        return False
    _, saturation, _ = colorsys.rgb_to_hsv(*(c / 255.0 for c in background))
    if saturation >= BACKGROUND_TINT_SATURATION:
        return hue_distance(hue_degrees(background), hue_degrees(rgb)) >= MIN_BACKGROUND_HUE_DEGREES
    return True


def sample_background(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    """A muted grey-ish RGB that satisfies the background rule for `colour`."""
    while True:  # 55-80% of draws pass, depending on the colour
        hue = rng.uniform(0.0, 1.0)
        saturation = rng.uniform(0.0, BACKGROUND_MAX_SATURATION)
        value = rng.uniform(*BACKGROUND_VALUE_RANGE)
        rgb = tuple(int(round(255.0 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value))
        if background_is_distinct(rgb, colour):
            return rgb


def sample_clip_spec(
    rng: np.random.Generator,
    combinations: list[tuple[str, str, str]],
    frames: int = DEFAULT_FRAMES,
    height: int = DEFAULT_HEIGHT,
    width: int = DEFAULT_WIDTH,
    placement: Placement = Placement.anywhere,
) -> ShapeClip:
    """A random clip of one of `combinations`: size, speed, start and background drawn so the shape stays inside,
    its path placed as `placement` says."""
    colour, shape, direction = combinations[int(rng.integers(len(combinations)))]
    dx, dy = DIRECTION_VECTORS[direction]
    if Placement(placement) is Placement.fixed:
        draw = rng.random() / FIXED_SIZE_WORD_P  # below 1: small, 1-2: large, else plain
        size = FIXED_SIZES["small" if draw < 1 else "large" if draw < 2 else "plain"]
        start = (0.5 - dx * FIXED_SPEED / 2, 0.5 - dy * FIXED_SPEED / 2)
        background = sample_background(rng, colour)
        return ShapeClip(colour, shape, direction, size, FIXED_SPEED, start, background, frames, height, width)
    size = float(rng.uniform(*SIZE_RANGE))
    if Placement(placement) is Placement.centred:
        speed = float(rng.uniform(*CENTRED_SPEED_RANGE))
        middle = 0.5 + rng.uniform(-CENTRED_JITTER, CENTRED_JITTER, size=2)  # (x, y) of the path's middle
        start = (float(middle[0] - dx * speed / 2), float(middle[1] - dy * speed / 2))
        background = sample_background(rng, colour)
        return ShapeClip(colour, shape, direction, size, speed, start, background, frames, height, width)
    speed = float(rng.uniform(*SPEED_RANGE))
    extent_px = size * min(height, width)
    along_px, across_px = (width, height) if dx else (height, width)
    # Centre range along each axis (fractions) that keeps the whole shape MARGIN inside the frame.
    along_lo, along_hi = extent_px / 2 / along_px + MARGIN, 1 - extent_px / 2 / along_px - MARGIN
    across_lo, across_hi = extent_px / 2 / across_px + MARGIN, 1 - extent_px / 2 / across_px - MARGIN
    speed = min(speed, along_hi - along_lo)  # a guard: never binds with the SIZE_RANGE and SPEED_RANGE above
    sign = dx + dy
    if sign > 0:
        along = rng.uniform(along_lo, along_hi - speed)
    else:
        along = rng.uniform(along_lo + speed, along_hi)
    across = rng.uniform(across_lo, across_hi)
    start = (float(along), float(across)) if dx else (float(across), float(along))
    background = sample_background(rng, colour)
    return ShapeClip(colour, shape, direction, size, speed, start, background, frames, height, width)


def clip_centres(spec: ShapeClip) -> np.ndarray:
    """(frames, 2) centre (x, y) of the shape in pixels at each frame; pixel i spans [i, i + 1)."""
    dx, dy = DIRECTION_VECTORS[spec.direction]
    progress = np.arange(spec.frames) / max(spec.frames - 1, 1)  # (f,) 0 -> 1
    x = (spec.start[0] + dx * spec.speed * progress) * spec.width
    y = (spec.start[1] + dy * spec.speed * progress) * spec.height
    return np.stack([x, y], axis=1)


def _inside(shape: str, x: np.ndarray, y: np.ndarray, extent: float) -> np.ndarray:
    """Whether points at offset (x, y) from the shape's bounding-box centre lie inside it."""
    half = extent / 2
    if shape == "circle":
        return x * x + y * y <= half * half
    if shape == "square":
        return (np.abs(x) <= half) & (np.abs(y) <= half)
    if shape == "triangle":  # apex up, base at the bottom; its width grows from 0 to `extent` going down
        return (y <= half) & (np.abs(x) <= (y + half) / 2)
    if shape == "ring":
        r2 = x * x + y * y
        return (r2 <= half * half) & (r2 >= (RING_INNER * half) ** 2)
    raise ValueError(f"unknown shape {shape!r}; expected one of {ALL_SHAPES}")


def render_clip(spec: ShapeClip) -> np.ndarray:
    """(frames, height, width, 3) uint8 frames of `spec`, edges anti-aliased by supersampling."""
    if spec.colour not in ALL_COLOURS:
        raise ValueError(f"unknown colour {spec.colour!r}; expected one of {tuple(ALL_COLOURS)}")
    if spec.direction not in DIRECTION_VECTORS:
        raise ValueError(f"unknown direction {spec.direction!r}; expected one of {DIRECTIONS}")
    s = SUPERSAMPLE
    extent = spec.size * min(spec.height, spec.width)
    coverage = np.zeros((spec.frames, spec.height, spec.width))  # fraction of each pixel inside the shape
    for f, (cx, cy) in enumerate(clip_centres(spec)):
        # Only the pixels under the shape's bounding box can be covered.
        x0, x1 = max(0, math.floor(cx - extent / 2)), min(spec.width, math.ceil(cx + extent / 2))
        y0, y1 = max(0, math.floor(cy - extent / 2)), min(spec.height, math.ceil(cy + extent / 2))
        if x0 >= x1 or y0 >= y1:
            continue
        xs = (np.arange(x0 * s, x1 * s) + 0.5) / s - cx  # (w s,) sample offsets from the centre, in pixels
        ys = (np.arange(y0 * s, y1 * s) + 0.5) / s - cy  # (h s,)
        inside = _inside(spec.shape, xs[None, :], ys[:, None], extent)  # (h s, w s)
        coverage[f, y0:y1, x0:x1] = inside.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3))
    background = np.asarray(spec.background, dtype=np.float64)
    colour = np.asarray(ALL_COLOURS[spec.colour], dtype=np.float64)
    frames = background + coverage[..., None] * (colour - background)  # (f, H, W, 3)
    return np.round(frames).clip(0, 255).astype(np.uint8)


def with_article(phrase: str) -> str:
    """`phrase` after "a", or "an" when it starts with a vowel."""
    return f"{'an' if phrase[:1] in 'aeiou' else 'a'} {phrase}"


def plain_caption(colour: str, shape: str, direction: str) -> str:
    """The plain caption: "a red circle moving left", "an orange square moving up"."""
    return with_article(PLAIN_CAPTION.format(colour=colour, shape=shape, direction=direction))


def caption(
    colour: str,
    shape: str,
    direction: str,
    rng: np.random.Generator,
    paraphrase_p: float = PARAPHRASE_P,
    size: float | None = None,
    name_size: bool = False,
) -> str:
    """The plain caption "a red circle moving left", or with probability `paraphrase_p` a paraphrase of it
    ("a small blue square slides up", "a green triangle moves to the right").

    A paraphrase may call a shape whose `size` is in the outer thirds of SIZE_RANGE "small" or "large"; with
    `name_size` every caption of such a shape does ("a small red circle moving left").
    """
    size_word = ""
    if size is not None:
        size_word = "small " if size < SMALL_BELOW else "large " if size > LARGE_ABOVE else ""
    if rng.random() >= paraphrase_p:
        plain = plain_caption(colour, shape, direction)
        return with_article(size_word + plain.split(" ", 1)[1]) if name_size and size_word else plain
    template = PARAPHRASES[int(rng.integers(len(PARAPHRASES)))]
    if size_word and not name_size and rng.random() >= 0.5:
        size_word = ""
    phrase = template.format(size=size_word, colour=colour, shape=shape, direction=direction, toward=TOWARD[direction])
    return with_article(phrase)


def _combination_for(index: int, seed: int, combinations: list[tuple[str, str, str]]) -> tuple[str, str, str]:
    """The combination of clip `index`: round `index // n` walks a seeded shuffle of all n combinations."""
    round_, position = divmod(index, len(combinations))
    order = np.random.default_rng([seed, round_, 0x5A]).permutation(len(combinations))
    return combinations[int(order[position])]


def _check_arguments(
    num_clips: int, frames: int, height: int, width: int, fps: int, paraphrase_p: float, workers: int
) -> None:
    if num_clips < 1:
        raise CogvidError(f"num_clips={num_clips}: need at least one clip")
    if frames < 2:
        raise CogvidError(f"frames={frames}: need at least 2 frames to show motion")
    if height < 16 or width < 16 or height % 2 or width % 2:
        raise CogvidError(f"size {height}x{width}: height and width must be even and at least 16 (H.264 yuv420p)")
    if fps < 1:
        raise CogvidError(f"fps={fps}: must be at least 1")
    if not 0.0 <= paraphrase_p <= 1.0:
        raise CogvidError(f"paraphrase_p={paraphrase_p}: must be in [0, 1]")
    if workers < 1:
        raise CogvidError(f"workers={workers}: must be at least 1")


def _prepare_folder(out: Path, overwrite: bool) -> None:
    """Make `out` ready for a dataset: refuse one already there, or clear its clips when `overwrite`."""
    if out.exists() and not out.is_dir():
        raise CogvidError(f"{out} exists and is not a folder")
    manifest = out / "dataset.json"
    videos = sorted((out / "videos").glob("*.mp4"))
    labels = sorted((out / "labels").glob("*.txt"))
    if not (manifest.exists() or videos or labels):
        return
    if not overwrite:
        raise CogvidError(f"{out} already holds a dataset ({len(videos)} videos); overwrite (--overwrite) replaces it")
    log.info("replacing the dataset in %s (%d videos)", out, len(videos))
    for path in [manifest, *videos, *labels]:
        path.unlink(missing_ok=True)


def plan_dataset(
    num_clips: int,
    seed: int = 0,
    *,
    frames: int = DEFAULT_FRAMES,
    height: int = DEFAULT_HEIGHT,
    width: int = DEFAULT_WIDTH,
    paraphrase_p: float = PARAPHRASE_P,
    combinations: list[tuple[str, str, str]] | None = None,
    placement: Placement = Placement.anywhere,
) -> list[PlannedClip]:
    """The clips `write_dataset` writes for these arguments (cheap: nothing is rendered). `combinations`: what the
    clips show (default: `training_combinations()`, the base model's data); `placement`: where their paths lie."""
    combinations = combinations or training_combinations()
    name_size = Placement(placement) is Placement.fixed  # there the caption is all that tells the size
    plan = []
    for index in range(num_clips):
        rng = np.random.default_rng([seed, index])
        combination = _combination_for(index, seed, combinations)
        spec = sample_clip_spec(rng, [combination], frames=frames, height=height, width=width, placement=placement)
        text = caption(*combination, rng, paraphrase_p, size=spec.size, name_size=name_size)
        plan.append(PlannedClip(f"{index:06d}", spec, text))
    return plan


def _write_clip(out: Path, clip: PlannedClip, fps: int) -> None:
    """Render and write one clip's video and label."""
    write_mp4(out / "videos" / f"{clip.name}.mp4", render_clip(clip.spec), fps)
    label = f"{clip.caption}\n".encode("ascii")
    write_atomic(out / "labels" / f"{clip.name}.txt", lambda f: f.write(label))


def write_dataset(
    out: str | Path,
    num_clips: int,
    seed: int = 0,
    *,
    frames: int = DEFAULT_FRAMES,
    height: int = DEFAULT_HEIGHT,
    width: int = DEFAULT_WIDTH,
    fps: int = DEFAULT_FPS,
    paraphrase_p: float = PARAPHRASE_P,
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 1,
    combinations: list[tuple[str, str, str]] | None = None,
    placement: Placement = Placement.anywhere,
) -> DatasetSummary:
    """Write `num_clips` training clips to `out` in SAT's layout + dataset.json: by default of the base model's
    combinations (never a held-out one), else of `combinations` (e.g. a LoRA's new word).

    `workers` threads render and encode clips side by side (the encoder is a subprocess); files are the same.
    """
    _check_arguments(num_clips, frames, height, width, fps, paraphrase_p, workers)
    out = Path(out)
    _prepare_folder(out, overwrite)
    plan = plan_dataset(
        num_clips,
        seed,
        frames=frames,
        height=height,
        width=width,
        paraphrase_p=paraphrase_p,
        combinations=combinations,
        placement=placement,
    )
    _write_clips(out, plan, fps, workers=workers, progress=progress)
    summary = _summarize(out, plan)
    settings = {
        "seed": seed,
        "num_clips": num_clips,
        "frames": frames,
        "height": height,
        "width": width,
        "fps": fps,
        "paraphrase_p": paraphrase_p,
        "placement": Placement(placement).value,
    }
    _write_manifest(out, settings, plan, summary)
    log.info("wrote %d shapes clips to %s", num_clips, out)
    return summary


def _write_clips(out: Path, plan: list[PlannedClip], fps: int, *, workers: int, progress: bool) -> None:
    """Render and write every planned clip, `workers` at a time, behind a progress bar."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        written = pool.map(lambda clip: _write_clip(out, clip, fps), plan)
        for _ in tqdm(written, total=len(plan), desc="shapes clips", unit="clip", disable=not progress, leave=False):
            pass


def _summarize(out: Path, plan: list[PlannedClip]) -> DatasetSummary:
    """How often each word appears in the planned clips, and how many captions are paraphrases."""
    specs = [clip.spec for clip in plan]
    return DatasetSummary(
        out=out,
        num_clips=len(plan),
        colours=_counts([s.colour for s in specs], tuple(ALL_COLOURS)),
        shapes=_counts([s.shape for s in specs], ALL_SHAPES),
        directions=_counts([s.direction for s in specs], DIRECTIONS),
        paraphrased=sum(c.caption != plain_caption(c.spec.colour, c.spec.shape, c.spec.direction) for c in plan),
        held_out=held_out_combinations(),
    )


def _write_manifest(out: Path, settings: dict, plan: list[PlannedClip], summary: DatasetSummary) -> None:
    """Write OUT/dataset.json: the arguments in `settings`, the counts, the vocabulary and every clip's spec."""
    manifest = {
        **settings,
        "counts": {"colour": summary.colours, "shape": summary.shapes, "direction": summary.directions},
        "paraphrased": summary.paraphrased,
        "held_out": [list(t) for t in summary.held_out],
        "vocabulary": {"colours": ALL_COLOURS, "shapes": list(ALL_SHAPES), "directions": list(DIRECTIONS)},
        "clips": [{"name": c.name, "caption": c.caption, **asdict(c.spec)} for c in plan],
    }
    payload = (json.dumps(manifest, indent=1) + "\n").encode("utf-8")
    write_atomic(out / "dataset.json", lambda f: f.write(payload))


def _counts(words: list[str], names: tuple[str, ...]) -> dict[str, int]:
    """How often each of `names` occurs in `words`, in `names` order (zeros included)."""
    counter = Counter(words)
    return {name: counter[name] for name in names}
