"""The shapes model shipped in cogvid/weights/shapes: `model=shapes` with no other option samples videos whose pixels
show what the prompt asks for (colour, direction and shape, read by the shapes measurer; one prompt of each shape),
and its T5 and VAE load as the recipe wrote them. The model draws the asked shape in about 85-90 % of videos
(benchmarks/shapes_adherence.py), so the prompts are ones it drew right for both of the benchmark's seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cogvid.config.compose import compose, package_path
from cogvid.inference.run import run_sample
from cogvid.shapes.measure import measure_video_file, parse_caption

TORCH_THREADS = 2
# Prompts the recipe trained on, one of each shape; seed 7 is fixed so that the test checks the same videos on every
# run (v7 and v8 both draw them right).
PROMPTS = ("a red circle moving down", "an orange square moving left", "an orange triangle moving down")


def test_the_weights_are_shipped_inside_the_package():
    weights = Path(package_path("weights/shapes"))
    record = json.loads((weights / "recipe.json").read_text())
    assert {"data", "t5", "vae", "precompute", "dit", "ship"} <= set(record)  # the recipe that made them
    size = sum(f.stat().st_size for f in weights.rglob("*") if f.is_file())
    assert size <= 25 * 1024**2, f"{size / 1024**2:.1f} MB shipped, the budget is 25 MB"


@pytest.fixture(scope="module")
def shipped_videos(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("shipped")
    prompts = out / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    cfg = compose(["model=shapes", f"infer.prompts_file={prompts}", "infer.seed=7", f"infer.output_dir={out}"])
    files = run_sample(cfg)
    return sorted(f for f in files if f.suffix == ".mp4")


@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_the_shipped_model_draws_the_prompt(shipped_videos, i):
    expected = parse_caption(PROMPTS[i])
    reading = measure_video_file(shipped_videos[i])
    assert reading.found, f"{PROMPTS[i]}: no moving shape in {shipped_videos[i].name}"
    assert (reading.colour, reading.shape, reading.direction) == expected, f"{PROMPTS[i]}: read {reading}"
