"""Video to video (SDEdit, `infer.video` + `infer.strength`) on the shipped shapes model: strength 0 gives the clip
back through the VAE, strength 1 is the text-to-video sample of the seed for every solver, 0.6 repaints the clip to
the prompt while it keeps the clip's background, and a bad clip is one line and exit code 2 before any model loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, text_contexts
from safetensors.torch import load_file

import cogvid.diffusion.sampling as sampling
from cogvid.config.compose import compose
from cogvid.diffusion.sampling import sample_latents, start_step
from cogvid.diffusion.solvers import SOLVERS
from cogvid.inference.pipeline import VideoPipeline
from cogvid.inference.run import run_sample
from cogvid.inference.source_video import read_source_video
from cogvid.shapes.dataset import ShapeClip, render_clip
from cogvid.shapes.measure import measure_video
from cogvid.utils.errors import CogvidError
from cogvid.utils.media import read_mp4, to_uint8_frames, write_mp4

TORCH_THREADS = 1
# The source: a red circle sliding right over a green-grey background, 9 frames of 64 x 64 at 8 fps (the model's).
SOURCE = ShapeClip("red", "circle", "right", size=0.3, speed=0.5, start=(0.3, 0.5), background=(90, 110, 100))
PROMPT = "a blue circle moving right"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255**2 / mse)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("source") / "red_circle_right.mp4"
    write_mp4(path, render_clip(SOURCE), fps=8)
    return path


@pytest.fixture(scope="module")
def cfg(clip):
    return compose(["model=shapes", f"infer.video={clip}"])


@pytest.fixture(scope="module")
def pipeline(cfg) -> VideoPipeline:
    return VideoPipeline.from_config(cfg)


@pytest.fixture(scope="module")
def source(cfg, pipeline) -> torch.Tensor:
    """The clip's scaled latent (1, t, c, h, w)."""
    return pipeline.encode_video(read_source_video(cfg, pipeline.shape_for(None)))


def test_strength_selects_the_start_step():
    assert [start_step(s, 50) for s in (1.0, 0.6, 0.0)] == [0, 20, 50]
    assert start_step(0.5, 5) == 3  # (1 - 0.5) * 5 = 2.5: halves round up
    with pytest.raises(ValueError):
        start_step(1.5, 50)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_strength_one_is_text_to_video_and_a_later_start_walks_the_rest(pipeline, source, solver, monkeypatch):
    """For every solver (SDE draws included): start step 0 gives the text-to-video latents bit for bit, start step k
    tells the denoiser steps k, k + 1, ... and the last step returns the clean latent itself."""
    sampler = compose(["model=shapes", f"sampler.solver={solver}", "sampler.num_steps=8"]).sampler
    cond, uncond = text_contexts(pipeline, PROMPT, None)

    def run(start=None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(3)
        return sample_latents(
            pipeline.model, sampler, cond, uncond, shape=source.shape, generator=generator, start=start
        )

    assert torch.equal(run(start=(source, 0)), run())

    told: list[int] = []
    real = sampling.guided_denoiser

    def recording(*args):
        denoise = real(*args)

        def record(x, i):
            told.append(i)
            return denoise(x, i)

        return record

    monkeypatch.setattr(sampling, "guided_denoiser", recording)
    assert torch.isfinite(run(start=(source, 5))).all()
    assert told[0] == 5 and set(told) <= set(range(5, 8)), told
    told.clear()
    assert torch.equal(run(start=(source, 8)), source) and told == []


def test_strength_one_and_zero_through_the_pipeline(pipeline, source):
    """Strength 1: the text-to-video sample of the seed; strength 0: the decoded clip latent, whatever the seed."""
    t2v = pipeline.generate(PROMPT, seed=11)
    v2v = pipeline.generate(PROMPT, seed=11, source=source, strength=1.0)
    assert torch.equal(v2v.latents, t2v.latents) and torch.equal(v2v.video, t2v.video)
    kept = pipeline.generate(PROMPT, seed=11, source=source, strength=0.0)
    assert torch.equal(kept.video, pipeline.decode(source))


def test_strength_0_6_repaints_to_the_prompt_and_keeps_the_background(pipeline, source, clip):
    """The prompt asks for blue: the result is blue and, in most seeds, still moves right (the v3 shapes model: seeds
    1 and 2; seed 0's blob reads no direction); its background stays nearer the clip's than the text-to-video
    samples' of the same seeds do (measured, seeds 0-2: 24.2, 14.1, 40.1 RGB units from it, against 15.3, 44.1,
    53.9)."""
    src = read_mp4(clip)
    reading = measure_video(src)
    assert (reading.colour, reading.direction) == ("red", "right")
    away_v2v, away_t2v, directions = [], [], []
    for seed in range(3):
        v2v = pipeline.generate(PROMPT, seed=seed, source=source, strength=0.6)
        t2v = pipeline.generate(PROMPT, seed=seed)
        frames = to_uint8_frames(v2v.video)
        got = measure_video(frames)
        assert got.colour == "blue", got
        directions.append(got.direction)
        assert not torch.equal(v2v.latents, t2v.latents) and psnr(frames, src) < 25
        for readings, video in ((away_v2v, frames), (away_t2v, to_uint8_frames(t2v.video))):
            readings.append(np.linalg.norm(np.subtract(measure_video(video).background_rgb, reading.background_rgb)))
    assert directions.count("right") >= 2, directions
    assert np.mean(away_v2v) < 0.8 * np.mean(away_t2v), (away_v2v, away_t2v)


def test_strength_zero_writes_the_clip_back_for_every_prompt_and_video(pipeline, source, clip, tmp_path):
    """No step is run: each written video is the clip's VAE round trip (its latents are the clip's posterior mean),
    as close to the clip as the round trip itself up to the MP4 encode (measured PSNR with the v3 shapes VAE: 23.6 dB
    before it; v2's gave 26.0, v1's, on smaller shapes, 27.7)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a blue circle moving right\na green square moving up\n")
    out = tmp_path / "out"
    cfg = compose(
        [
            "model=shapes",
            f"infer.video={clip}",
            "infer.strength=0",
            f"infer.prompts_file={prompts}",
            "infer.num_videos_per_prompt=2",
            "infer.save_latents=true",
            f"infer.output_dir={out}",
        ]
    )
    files = run_sample(cfg)
    videos = sorted(f for f in files if f.suffix == ".mp4")
    assert len(videos) == 4
    src = read_mp4(clip)
    round_trip = psnr(to_uint8_frames(pipeline.decode(source)), src)
    assert round_trip > 23.0  # measured: 23.6 dB (the v3 shapes VAE)
    for video in videos:
        assert psnr(read_mp4(video), src) > round_trip - 0.5
        unscaled = load_file(video.with_suffix(".latents.safetensors"))["latents"]
        expected = source.permute(0, 2, 1, 3, 4) / cfg.model.scale_factor  # (1, c, t, h, w), as written
        torch.testing.assert_close(unscaled, expected, rtol=0, atol=0)
        sidecar = json.loads(video.with_suffix(".json").read_text())
        assert sidecar["video"] == str(clip) and sidecar["strength"] == 0.0


def bad_clips(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a fragment of its one error line)."""
    frames = render_clip(SOURCE)
    junk = folder / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    text = folder / "notes.txt"
    text.write_text("a red circle moving right\n")
    one = write_mp4(folder / "one_frame.mp4", frames[:1], fps=8)
    short = write_mp4(folder / "five_frames.mp4", frames[:5], fps=8)
    return {
        "junk": (junk, "is not a readable video"),
        "text": (text, "is not a readable video"),
        "one-frame": (one, "holds a single frame"),
        "too-short": (short, "holds 5 frames at 8 fps, fewer than infer.num_frames=9: give a clip of at least 9"),
    }


def test_a_bad_clip_is_one_line_and_exit_2_and_writes_nothing(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, (path, fragment) in bad_clips(inputs).items():
        work = tmp_path / name
        work.mkdir()
        before = path.read_bytes()
        done = run_cli("cogvid-sample", "model=shapes", f"infer.prompt={PROMPT}", f"infer.video={path}", cwd=work)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, (name, done.stderr)
        assert lines[0].startswith("cogvid-sample: error: infer.video=") and fragment in lines[0], lines[0]
        assert list(work.iterdir()) == [] and path.read_bytes() == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["infer.strength=1.5"], r"infer.strength=1.5 must lie in \[0, 1\]"),
        (["infer.strength=nan"], "infer.strength=nan must be a finite number"),
        (["infer.strength=-0.1"], "infer.strength=-0.1 must be >= 0"),
        (["infer.video={missing}"], "no such file"),
        (["infer.video={clip}", "infer.image={clip}"], "infer.video and infer.image exclude each other"),
        (["model=5b_i2v", "infer.video={clip}"], "is image-to-video; video to video takes a text-to-video model"),
    ],
)
def test_option_values_are_refused_before_loading(clip, tmp_path, overrides, message):
    out = tmp_path / "out"
    args = [a.format(clip=clip, missing=tmp_path / "missing.mp4") for a in overrides]
    cfg = compose(["model=shapes", f"infer.prompt={PROMPT}", f"infer.output_dir={out}", *args])
    with pytest.raises(CogvidError, match=message) as info:
        run_sample(cfg)
    assert "\n" not in str(info.value) and not out.exists()
