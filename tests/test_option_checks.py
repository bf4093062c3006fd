"""Out-of-range option values are refused with one line naming the option, before any weights load or any file is
written: for cogvid-sample, cogvid-train (every task) and cogvid-export."""

from __future__ import annotations

from pathlib import Path

import pytest

from cogvid.config.compose import compose
from cogvid.inference.run import run_sample
from cogvid.interop.run import run_export
from cogvid.training.run import run_train
from cogvid.utils.errors import CogvidError

TORCH_THREADS = 1


@pytest.fixture
def a_file(tmp_path) -> Path:
    f = tmp_path / "notes.txt"
    f.write_text("not a folder\n")
    return f


SAMPLE_CASES = [
    ("infer.seed=-1", "infer.seed=-1 must be an integer in [0, 2**63 - 1]"),
    ("infer.seed=18446744073709551616", "infer.seed=18446744073709551616 must be an integer"),
    ("infer.seed=9223372036854775808", "infer.seed=9223372036854775808 must be an integer"),
    ("sampler.guidance_scale=nan", "sampler.guidance_scale=nan must be a finite number"),
    ("sampler.guidance_scale=inf", "sampler.guidance_scale=inf must be a finite number"),
    ("sampler.guidance_scale=-inf", "sampler.guidance_scale=-inf must be a finite number"),
    ("infer.vae_tile=[0,4]", "infer.vae_tile=[0, 4] must be [h, w] in latents, both >= 1"),
    ("infer.vae_tile=[-2,4]", "infer.vae_tile=[-2, 4] must be"),
    ("infer.vae_tile=[4]", "infer.vae_tile=[4] must be"),
    ("sampler.num_steps=0", "sampler.num_steps=0 must be >= 1"),
    ("infer.num_videos_per_prompt=0", "infer.num_videos_per_prompt=0 must be >= 1"),
    ("infer.fps=0", "infer.fps=0 must be >= 1"),
]


@pytest.mark.parametrize(("override", "message"), SAMPLE_CASES)
def test_cogvid_sample_refuses_before_loading(tmp_path, override, message):
    out = tmp_path / "out"
    cfg = compose(["model=shapes", "infer.prompt=a red circle moving right", f"infer.output_dir={out}", override])
    with pytest.raises(CogvidError, match=message.replace("[", r"\[").replace("*", r"\*")) as info:
        run_sample(cfg)
    assert "\n" not in str(info.value) and not out.exists()


@pytest.mark.parametrize("under", ["", "sub/dir"])
def test_an_output_dir_that_is_a_file_or_under_one_is_refused(tmp_path, a_file, under):
    target = a_file / under if under else a_file
    cases = [
        (run_sample, compose(["model=shapes", "infer.prompt=a red circle", f"infer.output_dir={target}"]), "infer"),
        (run_train, compose(["model=shapes", f"data.root={tmp_path}", f"train.output_dir={target}"], "train"), "train"),
        (run_train, compose(["model=shapes", "task=precompute", f"data.cache={target}"], "train"), "data.cache"),
        (run_export, compose(["task=to_diffusers", "model=shapes", f"out={target}"], "export"), "out="),
    ]
    for run, cfg, option in cases:
        with pytest.raises(CogvidError, match=f"{option}.*lies under a file, not a folder") as info:
            run(cfg)
        assert "\n" not in str(info.value)
    assert a_file.read_text() == "not a folder\n" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


TRAIN_CASES = [
    ("train.lr=-1", "train.lr=-1.0 must be > 0"),
    ("train.lr=nan", "train.lr=nan must be a finite number"),
    ("train.lr=0", "train.lr=0.0 must be > 0"),
    ("data.num_workers=-1", "data.num_workers=-1 must be >= 0"),
    ("data.fps=0", "data.fps=0 must be >= 1"),
    ("data.fps=-8", "data.fps=-8 must be >= 1"),
    ("train.seed=-5", "train.seed=-5 must be an integer"),
    ("train.weight_decay=-0.1", "train.weight_decay=-0.1 must be >= 0"),
    ("train.gradient_clip=inf", "train.gradient_clip=inf must be a finite number"),
    ("train.betas=[0.9,1.5]", r"train.betas=\[0.9, 1.5\] must be two numbers in \[0, 1\)"),
    ("train.validation.seeds=[1,-2]", r"train.validation.seeds\[1\]=-2 must be an integer"),
    ("train.ema_decay=1", r"train.ema_decay=1.0 must lie in \(0, 1\)"),
    ("train.ema_decay=0", r"train.ema_decay=0.0 must lie in \(0, 1\)"),
    ("train.ema_decay=-0.5", r"train.ema_decay=-0.5 must lie in \(0, 1\)"),
    ("train.ema_decay=nan", r"train.ema_decay=nan must lie in \(0, 1\)"),
    ("train.sat_weights=ema", "train.sat_weights=ema needs an EMA: set train.ema_decay"),
]


@pytest.mark.parametrize("task", ["fit", "precompute", "vae"])
@pytest.mark.parametrize(("override", "message"), TRAIN_CASES)
def test_cogvid_train_refuses_before_reading_data(tmp_path, task, override, message):
    out = tmp_path / "out"
    cfg = compose(
        [
            "model=shapes",
            f"task={task}",
            "data.root=/nonexistent",
            f"data.cache={tmp_path / 'cache'}",
            f"train.output_dir={out}",
            override,
        ],
        "train",
    )
    with pytest.raises(CogvidError, match=message) as info:
        run_train(cfg)
    assert "\n" not in str(info.value) and list(tmp_path.iterdir()) == []
