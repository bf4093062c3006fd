"""Exact resume: a cogvid-train run SIGKILLed while writing a checkpoint, resumed with train.resume=auto, gives the
per-step losses, final weights and EMA of an uninterrupted run, bit for bit (CPU, model=tiny)."""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TIMEOUT, pythonpath, run_cli
from train_helpers import make_sat_dataset, tiny_overrides

from cogvid.config.compose import compose
from cogvid.sat.checkpoint import read_sat_state_dict
from cogvid.training.ema import EMA_KEY
from cogvid.training.metrics import read_train_log
from cogvid.training.resume import CHECKPOINTS, STATE, complete_checkpoints, damage, resolve_resume, step_dir_name
from cogvid.training.run import run_train
from cogvid.utils.errors import CogvidError

TESTS = Path(__file__).resolve().parent
STEPS, EVERY = 7, 3
EMA = ("train.ema_decay=0.7", "train.sat_weights=ema")  # the runs keep an EMA and export it as their SAT weights
KILL = "train.callbacks=[{_target_: train_helpers.callbacks.KillAtStep, step: 6, mid_save: true}]"


def cogvid_train(*overrides: str) -> subprocess.CompletedProcess:
    """cogvid-train in a process of its own, forked from the tests' command server (conftest.run_cli: the imports
    done once; tests/ is on its path, for KillAtStep), one intra-op thread."""
    return run_cli("cogvid-train", *overrides, env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_t5_dir):
    """(uninterrupted output dir, killed-then-resumed output dir, what the killed run left behind)."""
    tmp = tmp_path_factory.mktemp("resume")
    data = make_sat_dataset(tmp / "data", n=2)

    def overrides(out: Path, *extra: str) -> list[str]:
        common = (
            f"data.root={data}",
            f"train.max_steps={STEPS}",
            f"train.checkpoint_every={EVERY}",
            "train.keep_last=2",
            *EMA,
        )
        return [*tiny_overrides(tiny_t5_dir, out, *common, mode="sft"), f"hydra.run.dir={out}/hydra", *extra]

    whole = cogvid_train(*overrides(tmp / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = cogvid_train(*overrides(tmp / "killed", KILL))
    assert killed.returncode == -9, killed.stderr[-3000:]
    left = {
        "complete": [step for step, _ in complete_checkpoints(tmp / "killed")],
        "temp": sorted(p.name for p in (tmp / "killed" / "checkpoints").glob(".step-*")),
        "logged": sorted(read_train_log(tmp / "killed")),
    }
    # Make it harder: a step folder without meta.json and a `latest` naming it must not be picked either.
    fake = tmp / "killed" / "checkpoints" / "step-00000009"
    fake.mkdir()
    shutil.copy(tmp / "killed" / "checkpoints" / "step-00000003" / "state.ckpt", fake / "state.ckpt")
    (tmp / "killed" / "checkpoints" / "latest").write_text("step-00000009")
    assert resolve_resume("auto", tmp / "killed").name == "step-00000003"
    resumed = cogvid_train(*overrides(tmp / "killed", "train.resume=auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    shutil.rmtree(fake)
    return tmp / "whole", tmp / "killed", left


def test_a_checkpoint_cut_off_while_written_is_never_resumed(runs):
    _, _, left = runs
    assert left["complete"] == [3]  # step 6 was being written when the process died
    assert left["temp"] == [".step-00000006.tmp"]
    assert left["logged"] == list(range(1, 7))


def test_killed_and_resumed_equals_uninterrupted_bitwise(runs):
    whole, resumed, _ = runs
    a, b = read_train_log(whole), read_train_log(resumed)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    assert [a[s]["loss"] for s in a] == [b[s]["loss"] for s in a]
    assert [a[s]["lr"] for s in a] == [b[s]["lr"] for s in a]
    wa, _ = read_sat_state_dict(whole / "sat")  # the EMA weights (train.sat_weights=ema)
    wb, _ = read_sat_state_dict(resumed / "sat")
    assert (whole / "sat" / "latest").read_text() == (resumed / "sat" / "latest").read_text() == str(STEPS)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # the trained weights, the optimizer state and the EMA of the last checkpoint
    last = Path(CHECKPOINTS, step_dir_name(STEPS), STATE)
    sa, sb = (torch.load(run / last, map_location="cpu", weights_only=True) for run in (whole, resumed))
    assert sa["state_dict"].keys() == sb["state_dict"].keys()
    assert all(torch.equal(sa["state_dict"][k], sb["state_dict"][k]) for k in sa["state_dict"])
    ea, eb = sa[EMA_KEY], sb[EMA_KEY]
    assert ea["updates"] == eb["updates"] == STEPS and ea["weights"].keys() == eb["weights"].keys()
    assert all(torch.equal(ea["weights"][k], eb["weights"][k]) for k in ea["weights"])
    assert all(torch.equal(ea["weights"][k].to(wa[k].dtype), wa[k]) for k in ea["weights"])
    moments = [[s["exp_avg"] for s in state["optimizer_states"][0]["state"].values()] for state in (sa, sb)]
    assert all(torch.equal(x, y) for x, y in zip(*moments, strict=True))
    # the last K=2 complete checkpoints are kept, temp folders are gone
    assert [s for s, _ in complete_checkpoints(resumed)] == [6, 7]
    assert not list((resumed / "checkpoints").glob(".step-*"))


def test_resuming_another_model_or_mode_is_one_line(runs, tiny_t5_dir, tmp_path):
    _, resumed, _ = runs
    step = resumed / "checkpoints" / "step-00000007"
    data = f"data.root={resumed.parent / 'data'}"  # the data is checked first, then the checkpoint
    for extra, mode, match in (
        (("model.hidden_size=128",), "sft", "hidden_size 64 \\(this run: 128\\)"),
        ((), "lora", "mode 'sft' \\(this run: 'lora'\\)"),
    ):
        cfg = compose(tiny_overrides(tiny_t5_dir, tmp_path, data, f"train.resume={step}", *extra, mode=mode), "train")
        with pytest.raises(CogvidError, match=match):
            run_train(cfg)
    cfg = compose(tiny_overrides(tiny_t5_dir, tmp_path, data, f"train.resume={tmp_path / 'nothing'}"), "train")
    with pytest.raises(CogvidError, match="no such checkpoint"):
        run_train(cfg)


def test_a_damaged_checkpoint_is_never_resumed(runs, tmp_path, caplog):
    """Size and SHA-256 of state.ckpt are recorded in meta.json: a checkpoint truncated or changed after it was
    written is skipped by train.resume=auto with one warning line, and refused when named or when none is intact."""
    _, resumed, _ = runs
    shutil.copytree(resumed / "checkpoints", tmp_path / "checkpoints")
    newest, older = (tmp_path / "checkpoints" / f"step-0000000{s}" for s in (7, 6))
    meta = json.loads((newest / "meta.json").read_text())
    assert meta["state_files"]["state.ckpt"]["size"] == (newest / "state.ckpt").stat().st_size
    assert resolve_resume("auto", tmp_path) == newest  # intact

    data = (newest / "state.ckpt").read_bytes()
    (newest / "state.ckpt").write_bytes(data[: len(data) // 2])  # cut off, meta.json intact
    with caplog.at_level(logging.WARNING, logger="cogvid.training.resume"):
        assert resolve_resume("auto", tmp_path) == older
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1 and "step-00000007 damaged" in warnings[0] and "resuming from step-00000006" in warnings[0]
    )
    with pytest.raises(CogvidError, match="is damaged .*state.ckpt has .* bytes"):
        resolve_resume(str(newest), tmp_path)

    flipped = bytearray((older / "state.ckpt").read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # same size, other bytes
    (older / "state.ckpt").write_bytes(bytes(flipped))
    with pytest.raises(CogvidError, match="no intact checkpoint; the newest, .*step-00000007, is damaged") as info:
        resolve_resume("auto", tmp_path)
    assert "\n" not in str(info.value)
    assert damage(older) == "a state file's SHA-256 differs from the one recorded when it was written"


def test_a_full_disk_while_checkpointing_keeps_the_older_checkpoints(runs, tiny_t5_dir, tmp_path):
    """A checkpoint that the storage refuses (here RLIMIT_FSIZE: EFBIG) ends the run with one line naming the file;
    the checkpoints already written, and `latest`, stay as they were, and no temp folder is left."""
    whole, _, _ = runs
    out = tmp_path / "out"
    shutil.copytree(whole, out)
    checkpoints = out / "checkpoints"
    before = {p: p.read_bytes() for p in checkpoints.rglob("*") if p.is_file()}
    limit = (checkpoints / "step-00000007" / "state.ckpt").stat().st_size // 2
    common = (f"data.root={whole.parent / 'data'}", f"train.max_steps={STEPS + 2}", f"train.checkpoint_every={EVERY}")
    overrides = [*tiny_overrides(tiny_t5_dir, out, *common, "train.keep_last=2", *EMA, mode="sft"), "train.resume=auto"]

    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(os.environ, PYTHONPATH=pythonpath(TESTS), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "cogvid.cli.train", *overrides, f"hydra.run.dir={out}/hydra"],
        env=env,
        preexec_fn=set_limit,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("cogvid-train: error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert errors == [
        f"cogvid-train: error: cannot write {checkpoints / 'step-00000009' / 'state.ckpt'}: File too large"
    ]
    assert {p: p.read_bytes() for p in checkpoints.rglob("*") if p.is_file()} == before
    assert resolve_resume("auto", out).name == "step-00000007"
