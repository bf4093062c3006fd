"""The synthetic shapes dataset (deterministic, held-out combinations never trained on) and the pixel measurer."""

import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TIMEOUT

from cogvid.shapes.dataset import (
    CENTRED_JITTER,
    COLOURS,
    DIRECTIONS,
    MIN_BACKGROUND_DISTANCE,
    SHAPES,
    SIZE_RANGE,
    SPEED_RANGE,
    Placement,
    ShapeClip,
    background_is_distinct,
    caption,
    clip_centres,
    held_out_combinations,
    plain_caption,
    plan_dataset,
    render_clip,
    sample_clip_spec,
    training_combinations,
    vocabulary,
    write_dataset,
)
from cogvid.shapes.measure import measure_video, parse_caption, score
from cogvid.utils.errors import CogvidError
from cogvid.utils.media import read_mp4, write_mp4

TORCH_THREADS = 1  # no tensors here; keeps the autouse thread fixture from spinning

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_shapes_dataset.py"
ALL_COMBINATIONS = list(itertools.product(COLOURS, SHAPES, DIRECTIONS))


def _blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """(F, H, W, 3) -> float frames blurred by a separable Gaussian of `sigma` pixels (edges replicated)."""
    taps = np.arange(-2, 3)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    x = np.pad(frames.astype(np.float64), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    h, w = frames.shape[1:3]
    x = sum(k * x[:, i : i + h] for i, k in enumerate(kernel))
    return sum(k * x[:, :, i : i + w] for i, k in enumerate(kernel))


def _degrade(frames: np.ndarray, rng: np.random.Generator, noise: float = 20.0, blur: float = 0.7) -> np.ndarray:
    """A slight blur, then Gaussian noise of `noise` (0-255 units), back to uint8."""
    noisy = _blur(frames, blur) + rng.normal(0.0, noise, frames.shape)
    return np.round(noisy).clip(0, 255).astype(np.uint8)


# --- vocabulary, held-out combinations, captions ----------------------------------------------------------------


def test_vocabulary_and_held_out_combinations():
    words = vocabulary()
    assert {"red", "orange", "yellow", "green", "blue", "purple"} <= set(words.colours)
    assert {"circle", "square", "triangle"} <= set(words.shapes)
    assert set(words.directions) == {"left", "right", "up", "down"}
    held, training = held_out_combinations(), training_combinations()
    assert 8 <= len(held) <= 10 and len(set(held)) == len(held)
    assert ("red", "circle", "right") in training  # the demo prompt
    assert not set(held) & set(training) and set(held) | set(training) == set(ALL_COMBINATIONS)
    for colour, shape, direction in held:  # each part, and each pair of parts, is still trained on
        assert any(c == colour and s == shape for c, s, _ in training)
        assert any(c == colour and d == direction for c, _, d in training)
        assert any(s == shape and d == direction for _, s, d in training)


def test_captions_plain_and_paraphrased_parse_back():
    rng = np.random.default_rng(0)
    assert caption("red", "circle", "left", rng, paraphrase_p=0.0) == "a red circle moving left"
    assert plain_caption("orange", "square", "up") == "an orange square moving up"
    seen = set()
    for combination in ALL_COMBINATIONS:
        for size in (SIZE_RANGE[0] + 0.01, sum(SIZE_RANGE) / 2, SIZE_RANGE[1] - 0.01):
            text = caption(*combination, rng, paraphrase_p=1.0, size=size)
            assert text != plain_caption(*combination) and text.isascii() and text == text.lower()
            assert parse_caption(text) == combination, text
            seen.add(text.split()[1])
    assert {"small", "large"} <= seen
    assert parse_caption("a small blue square slides up") == ("blue", "square", "up")
    assert parse_caption("A green triangle moves to the right.") == ("green", "triangle", "right")
    assert parse_caption("a red circle") is None
    assert parse_caption("a red and blue circle moving left") is None
    assert parse_caption("a cat sleeping on a warm mat") is None


@pytest.mark.parametrize("placement", list(Placement))
def test_plan_is_balanced_never_held_out_and_keeps_shapes_in_frame(placement):
    plan = plan_dataset(300, seed=3, placement=placement)
    held = set(held_out_combinations())
    combinations = []
    for clip in plan:
        spec = clip.spec
        parsed = parse_caption(clip.caption)
        assert parsed == (spec.colour, spec.shape, spec.direction) and parsed not in held
        combinations.append(parsed)
        # background rule: far from the shape colour
        assert background_is_distinct(spec.background, spec.colour)
        assert np.linalg.norm(np.subtract(spec.background, COLOURS[spec.colour])) >= MIN_BACKGROUND_DISTANCE
        # the whole shape stays inside the frame, and the centre crosses at least SPEED_RANGE[0] of it
        centres = clip_centres(spec)  # (f, 2)
        half = spec.size * min(spec.height, spec.width) / 2
        assert (centres - half >= 0).all() and (centres[:, 0] + half <= spec.width).all()
        assert (centres[:, 1] + half <= spec.height).all()
        assert np.abs(centres[-1] - centres[0]).max() >= SPEED_RANGE[0] * spec.width - 1e-9
    middles = np.array([clip_centres(clip.spec)[[0, -1]].mean(axis=0) / 64 for clip in plan])  # (n, 2) in frames
    if placement is Placement.centred:  # the caption alone tells where the shape is
        assert np.abs(middles - 0.5).max() <= CENTRED_JITTER + 1e-9
    elif placement is Placement.fixed:  # the caption tells everything but the background
        geometry = {}
        for clip in plan:
            words = (*parse_caption(clip.caption), "small" in clip.caption.split(), "large" in clip.caption.split())
            geometry.setdefault(words, set()).add((clip.spec.size, clip.spec.speed, clip.spec.start))
        assert all(len(g) == 1 for g in geometry.values())
        sizes = {g for gs in geometry.values() for g, _, _ in gs}
        assert len(sizes) == 3 and np.abs(middles - 0.5).max() < 1e-9
    else:  # anywhere: the paths' middles spread over the frame
        assert np.ptp(middles, axis=0).min() > 0.3
    assert set(combinations) == set(training_combinations())
    assert {c for c, _, _ in combinations} == set(COLOURS)
    plain = sum(clip.caption == plain_caption(*parse_caption(clip.caption)) for clip in plan)
    assert 0.5 < plain / len(plan) < 0.9


def test_render_clip_geometry_and_anti_aliasing():
    spec = ShapeClip("blue", "circle", "right", 0.3, 0.4, (0.3, 0.5), (90, 90, 90), frames=5, height=32, width=48)
    frames = render_clip(spec)
    assert frames.shape == (5, 32, 48, 3) and frames.dtype == np.uint8
    assert (frames[:, 0, 0] == 90).all()  # the corner is background
    pixels = {tuple(p) for p in frames.reshape(-1, 3)}
    assert COLOURS["blue"] in pixels and len(pixels) > 10  # solid inside, blended at the edges
    assert (render_clip(spec) == frames).all()


# --- writing the dataset -----------------------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_write_dataset_is_deterministic_and_refuses_to_overwrite(tmp_path):
    geometry = dict(frames=9, height=32, width=32, fps=8, progress=False)
    summary = write_dataset(tmp_path / "a", 2, seed=0, **geometry)
    write_dataset(tmp_path / "b", 2, seed=0, **geometry)
    write_dataset(tmp_path / "c", 2, seed=1, **geometry)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b
    assert a["videos/000000.mp4"] != c["videos/000000.mp4"] and a["dataset.json"] != c["dataset.json"]
    videos = sorted(p.stem for p in (tmp_path / "a" / "videos").glob("*.mp4"))
    labels = sorted(p.stem for p in (tmp_path / "a" / "labels").glob("*.txt"))
    assert videos == labels and len(videos) == summary.num_clips == 2
    manifest = json.loads(a["dataset.json"])
    assert (manifest["seed"], manifest["frames"], manifest["height"], manifest["width"], manifest["fps"]) == (
        0, 9, 32, 32, 8,
    )  # fmt: skip
    assert [tuple(t) for t in manifest["held_out"]] == held_out_combinations()
    assert sum(manifest["counts"]["colour"].values()) == 2
    assert read_mp4(tmp_path / "a" / "videos" / "000000.mp4").shape == (9, 32, 32, 3)

    with pytest.raises(CogvidError, match="already holds a dataset"):
        write_dataset(tmp_path / "a", 2, seed=0, **geometry)
    write_dataset(tmp_path / "a", 1, seed=5, overwrite=True, **geometry)
    assert len(list((tmp_path / "a" / "videos").glob("*.mp4"))) == 1
    assert len(list((tmp_path / "a" / "labels").glob("*.txt"))) == 1
    with pytest.raises(CogvidError, match="num_clips"):
        write_dataset(tmp_path / "d", 0, progress=False)


# --- reading videos back ----------------------------------------------------------------------------------------


def _mosaic(clips: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows * cols, F, H, W, 3) clips -> (F, rows * H, cols * W, 3): one video showing them all side by side."""
    _, f, h, w, _ = clips.shape
    return clips.reshape(rows, cols, f, h, w, 3).transpose(2, 0, 3, 1, 4, 5).reshape(f, rows * h, cols * w, 3)


def _tiles(mosaic: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The inverse of `_mosaic`."""
    f, h, w = mosaic.shape[0], mosaic.shape[1] // rows, mosaic.shape[2] // cols
    return mosaic.reshape(f, rows, h, cols, w, 3).transpose(1, 3, 0, 2, 4, 5).reshape(rows * cols, f, h, w, 3)


def test_measure_reads_every_combination_after_an_mp4_round_trip(tmp_path):
    specs = [sample_clip_spec(np.random.default_rng([7, i]), [c]) for i, c in enumerate(ALL_COMBINATIONS)]
    clips = np.stack([render_clip(spec) for spec in specs])  # (72, 9, 64, 64, 3)
    # One MP4 holds all 72 clips as a 8 x 9 mosaic: one encode and one decode instead of 72.
    back = _tiles(read_mp4(write_mp4(tmp_path / "mosaic.mp4", _mosaic(clips, 8, 9), fps=8)), 8, 9)
    for combination, frames in zip(ALL_COMBINATIONS, back, strict=True):
        reading = measure_video(frames)
        assert score(reading, combination)["all"], (combination, reading)
        assert reading.displacement_px >= 0.9 * SPEED_RANGE[0] * frames.shape[2] and reading.flicker < 2.0


def test_measure_reads_colour_and_direction_through_noise_and_blur():
    rng = np.random.default_rng(11)
    shape_hits = 0
    cases = [(c, SHAPES[i % 3], d) for i, (c, d) in enumerate(itertools.product(COLOURS, DIRECTIONS))]
    for combination in cases:
        frames = _degrade(render_clip(sample_clip_spec(rng, [combination])), rng)
        result = score(measure_video(frames), combination)
        assert result["colour"] and result["direction"], (combination, measure_video(frames))
        shape_hits += result["shape"]
    assert shape_hits >= 0.9 * len(cases)


def test_measure_finds_nothing_in_noise_or_blank_frames_and_survives_odd_clips():
    rng = np.random.default_rng(0)
    for frames in (
        rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8),
        np.zeros((9, 64, 64, 3), dtype=np.uint8),
        np.full((9, 48, 32, 3), 200, dtype=np.uint8),
        np.clip(128 + rng.normal(0, 40, (9, 64, 64, 3)), 0, 255).astype(np.uint8),
        np.zeros((1, 8, 8, 3), dtype=np.uint8),
    ):
        reading = measure_video(frames)
        assert not reading.found and reading.colour is None and reading.direction is None
        assert not any(score(reading, ("red", "circle", "left")).values())
    # an object that leaves the frame, and one that stands still
    leaving = ShapeClip("green", "square", "right", 0.3, 0.9, (0.5, 0.5), (60, 60, 60))
    assert measure_video(render_clip(leaving)).direction == "right"
    still = measure_video(render_clip(ShapeClip("yellow", "circle", "up", 0.3, 0.0, (0.5, 0.5), (60, 60, 60))))
    assert still.found and still.colour == "yellow" and still.shape == "circle" and still.direction is None
    assert still.flicker == 0.0 and len(set(still.areas)) == 1


# --- the command --------------------------------------------------------------------------------------------------


def _script_main():
    spec = importlib.util.spec_from_file_location("make_shapes_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_script_help_and_one_line_errors(tmp_path, capsys):
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0 and "--num-clips" in result.stdout and "--overwrite" in result.stdout
    main = _script_main()
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "out"), "--num-clips", "0"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "dataset.json").write_text("{}")
    assert main([str(tmp_path / "taken"), "--num-clips", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a dataset" in err[0]
