"""cogvid-train checks its data and weights before the Trainer starts: with no readable clip, or a missing VAE, it
stops with one line and leaves nothing behind (no Lightning banner, no tensorboard/ events, no hparams.yaml)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cogvid.config.compose import compose
from cogvid.training.run import run_train
from cogvid.utils.errors import CogvidError
from cogvid.utils.media import write_mp4

TORCH_THREADS = 1


def bad_videos(root: Path) -> Path:
    """A SAT-layout folder whose every video is unusable: garbage bytes, an empty file, a single frame."""
    (root / "videos").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "videos" / "garbage.mp4").write_bytes(b"\x00\x01 not a video" * 100)
    (root / "videos" / "empty.mp4").write_bytes(b"")
    write_mp4(root / "videos" / "one_frame.mp4", np.zeros((1, 64, 64, 3), dtype=np.uint8), fps=8)
    for name in ("garbage", "empty", "one_frame"):
        (root / "labels" / f"{name}.txt").write_text("a red circle moving right\n")
    return root


def outside_manifest(root: Path) -> Path:
    root.mkdir(parents=True)
    manifest = root / "clips.csv"
    manifest.write_text("path,caption\n/etc/passwd,a red circle moving right\n/etc/hostname,a blue square moving up\n")
    return manifest


SOURCES = {
    "corrupt, empty and one-frame videos": lambda tmp: f"data.root={bad_videos(tmp / 'data')}",
    "a manifest pointing outside the data": lambda tmp: f"data.manifest={outside_manifest(tmp / 'data')}",
}


@pytest.mark.parametrize("task", ["fit", "vae", "precompute"])
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_no_readable_clip_stops_before_the_trainer(tmp_path, capsys, task, source):
    out, cache = tmp_path / "out", tmp_path / "cache"
    overrides = ["model=shapes", f"task={task}", SOURCES[source](tmp_path), f"train.output_dir={out}"]
    if task == "fit":
        overrides += ["mode=sft", "model.ckpt=null"]
    if task == "precompute":
        overrides.append(f"data.cache={cache}")
    if task == "vae":
        overrides += ["train.vae.holdout=1", "train.vae.clips_in_memory=false"]
    with pytest.raises(CogvidError, match="none of the .* videos is readable|clips, train.vae.holdout") as info:
        run_train(compose(overrides, "train"))
    assert "\n" not in str(info.value)
    assert not out.exists() and not cache.exists(), sorted(p.name for p in out.rglob("*"))
    assert "GPU available" not in capsys.readouterr().out  # Lightning's banner never printed


@pytest.mark.parametrize("task", ["fit", "precompute"])
def test_a_missing_vae_stops_before_the_trainer(tmp_path, task):
    out = tmp_path / "out"
    overrides = [
        "model=shapes",
        f"task={task}",
        f"data.root={bad_videos(tmp_path / 'data')}",
        f"train.output_dir={out}",
        f"model.vae_ckpt={tmp_path / 'nowhere' / '3d-vae.pt'}",
        f"data.cache={tmp_path / 'cache'}" if task == "precompute" else "model.ckpt=null",
    ]
    with pytest.raises(CogvidError, match=r"model.vae_ckpt=.*nowhere/3d-vae.pt: no such file"):
        run_train(compose(overrides, "train"))
    assert not out.exists() and not (tmp_path / "cache").exists()
