"""Runs that write into one folder at once keep every output, whole, once: sample indices are claimed, never
replaced (`cogvid.inference.outputs`); precomputes fill one cache once; one cogvid-train run per output dir; exports
to one `out` refuse (or, with overwrite=true, the last one wins whole).

The writers run as forked processes started together behind a barrier: separate processes, as separate commands
are, without paying for a fresh interpreter and torch import each."""

from __future__ import annotations

import faulthandler
import json
import multiprocessing
import os
import queue
import signal
import sys
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURE
from PIL import Image
from safetensors.torch import load_file
from train_helpers import make_sat_dataset, tiny_overrides

import cogvid.utils.files
from cogvid import compose
from cogvid.inference.frame_strip import frame_strip
from cogvid.inference.outputs import write_sample
from cogvid.training.resume import ResumableCheckpoints
from cogvid.training.run import RUN_LOCK, run_train
from cogvid.utils.errors import CogvidError
from cogvid.utils.locks import LockHeld, hold_lock
from cogvid.utils.numbered_names import INDEX_PREFIX, next_free_index

TORCH_THREADS = 1
FORK = multiprocessing.get_context("fork")
WAIT_S = 240  # for one process's result


def together(n: int, work) -> list[tuple[str, object]]:
    """`work(i, barrier)` in n forked processes started together; per process ("ok", result) or ("error", the
    CogvidError line); any other exception fails the test with its traceback."""
    barrier, results = FORK.Barrier(n), FORK.Queue()

    def child(i: int) -> None:
        torch.set_num_threads(1)
        # a stuck process shows where, in the test's captured stderr
        faulthandler.dump_traceback_later(WAIT_S - 20, file=sys.__stderr__)
        try:
            outcome = ("ok", work(i, barrier))
        except CogvidError as ex:
            outcome = ("error", str(ex))
        except BaseException:
            barrier.abort()  # the others do not wait for this one at the barrier: they fail with it
            outcome = ("crash", traceback.format_exc())
        results.put((i, outcome))

    procs = [FORK.Process(target=child, args=(i,)) for i in range(n)]
    for p in procs:
        p.start()
    got = {}
    try:
        while len(got) < n:
            i, outcome = results.get(timeout=WAIT_S)
            got[i] = outcome
    except queue.Empty:
        stuck = [i for i in range(n) if i not in got]
        raise AssertionError(
            f"processes {stuck} gave no result in {WAIT_S} s (their stacks: captured stderr); the others: {got}"
        ) from None
    finally:
        for p in procs:
            p.join(timeout=60 if len(got) == n else 0)  # a process that gave no result is not waited for again
            if p.is_alive():
                p.kill()
                p.join()
    crashes = [text for kind, text in got.values() if kind == "crash"]
    assert not crashes, crashes[0]
    return [got[i] for i in range(n)]


def hidden(folder: Path) -> list[str]:
    """Temp files, staged folders and lock files left behind."""
    return sorted(p.name for p in folder.rglob(".*"))


# --- sample names -----------------------------------------------------------------------------------------------


def check_videos(samples: Path) -> list[dict]:
    """Every video in `samples` complete (mp4, png, latents and JSON of one index, the latents its own) and alone at
    its index; their sidecars."""
    by_index: dict[int, list[Path]] = {}
    for p in samples.iterdir():
        if not p.name.startswith("."):
            by_index.setdefault(int(INDEX_PREFIX.match(p.name).group(1)), []).append(p)
    sidecars = []
    for index, files in by_index.items():
        stems = {p.name.split(".", 1)[0] for p in files}
        assert len(stems) == 1, f"index {index} is shared: {sorted(p.name for p in files)}"
        stem = samples / stems.pop()
        suffixes = sorted(p.name.split(".", 1)[1] for p in files)
        assert suffixes == ["json", "latents.safetensors", "mp4", "png"], suffixes
        meta = json.loads(stem.with_suffix(".json").read_text())
        assert load_file(f"{stem}.latents.safetensors")["latents"].flatten()[0].item() == meta["value"]
        with Image.open(stem.with_suffix(".png")) as strip:
            strip.load()
        assert stem.with_suffix(".mp4").stat().st_size > 0
        sidecars.append(meta)
    return sidecars


def test_four_writers_at_once_claim_an_index_each(tmp_path):
    """Round 0: every writer's prompt has one slug; round 1: each its own; round 2: two and two. Every video of
    every round is there, whole, once, at an index of its own."""
    samples = tmp_path / "samples"
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    prompts = [["a cat"] * 4, [f"fox {w}" for w in range(4)], ["a cat", "a cat", "a dog", "a dog"]]
    rounds = len(prompts)
    for r in range(rounds):

        def write_two(w: int, barrier, r=r) -> None:
            barrier.wait()
            first = next_free_index(samples)  # all four read the same hint
            for k in range(2):
                value = 100 * r + 10 * w + k
                latents = torch.full((1, 1, 1, 1, 1), float(value))
                sidecar = {"round": r, "writer": w, "index": k, "value": value}
                strip = frame_strip(frames + value, "strip")
                write_sample(samples, first + k, prompts[r][w], frames + value, 8, sidecar, latents, strip)

        assert all(kind == "ok" for kind, _ in together(4, write_two))
        sidecars = check_videos(samples)
        made = Counter((m["round"], m["writer"], m["index"]) for m in sidecars)
        assert made == Counter((q, w, k) for q in range(r + 1) for w in range(4) for k in range(2))
    assert sorted(int(INDEX_PREFIX.match(p.name).group(1)) for p in samples.glob("*.json")) == list(range(8 * rounds))
    assert hidden(samples) == []  # no temp file, and the lock file went with its last holder


def test_four_cogvid_sample_runs_into_one_dir_keep_every_video(tmp_path, tiny_t5_dir):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red fox\na red fox\n")  # one slug for all eight videos
    out = tmp_path / "out"
    weights = ["model=tiny", f"model.ckpt={FIXTURE / 'dit_ckpt'}", f"model.vae_ckpt={FIXTURE / 'vae' / '3d-vae.pt'}"]
    base = [*weights, f"model.text_encoder.path={tiny_t5_dir}", "device=cpu", "sampler.num_steps=1"]

    def run(i: int, barrier) -> int:
        from cogvid.inference.run import run_sample

        cfg = compose([*base, f"infer.prompts_file={prompts}", f"infer.output_dir={out}", f"infer.seed={10 * i}"])
        barrier.wait()
        return len([p for p in run_sample(cfg) if p.suffix == ".mp4"])

    assert together(4, run) == [("ok", 2)] * 4
    metas = [json.loads(p.read_text()) for p in (out / "samples").glob("*.json")]
    assert sorted(m["seed"] for m in metas) == [0, 1, 10, 11, 20, 21, 30, 31]  # each run's own seeds, each once
    assert sorted(m["index"] for m in metas) == [0, 0, 0, 0, 1, 1, 1, 1]  # the position in its own run
    names = sorted(p.stem for p in (out / "samples").glob("*.mp4"))
    assert names == [f"{i:04d}_a_red_fox" for i in range(8)]
    assert sorted(p.stem for p in (out / "samples").glob("*.json")) == names and hidden(out) == []


# --- precompute -------------------------------------------------------------------------------------------------


def test_four_precomputes_on_one_cache_write_each_sample_once(tmp_path, tiny_t5_dir):
    clips = make_sat_dataset(tmp_path / "clips", n=3)
    cache = tmp_path / "cache"
    cfg = compose(
        tiny_overrides(tiny_t5_dir, tmp_path / "out", f"data.root={clips}", f"data.cache={cache}", "task=precompute"),
        config_name="train",
    )

    def run(i: int, barrier):
        from cogvid.training.precompute import run_precompute
        from cogvid.training.run import plan_train

        plan = plan_train(cfg)
        barrier.wait()
        return run_precompute(cfg, plan)

    reports = [report for kind, report in together(4, run)]
    assert sum(r.written for r in reports) == 3  # every sample written by one run; the others kept its file
    assert all(r.written + r.kept == 3 and r.skipped == 0 for r in reports)
    files = sorted(p.name for p in (cache / "samples").iterdir())
    assert files == [f"{i:08d}.safetensors" for i in range(3)]
    assert all(load_file(cache / "samples" / f)["mean"].shape[0] == 16 for f in files)
    assert json.loads((cache / "meta.json").read_text())["latent_layout"] == "c t h w" and hidden(cache) == []


# --- training ---------------------------------------------------------------------------------------------------


def test_the_run_lock_is_held_by_a_live_run_only(tmp_path):
    """A live holder refuses a second one and is named; a holder killed by SIGKILL blocks nobody."""
    lock = tmp_path / RUN_LOCK

    def hold(i: int, barrier):
        with hold_lock(lock, wait=False):
            barrier.wait()  # held
            barrier.wait()  # the parent tried
            if i == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    barrier = FORK.Barrier(2)
    child = FORK.Process(target=hold, args=(0, barrier))
    child.start()
    barrier.wait()
    with pytest.raises(LockHeld) as info:
        with hold_lock(lock, wait=False):
            pass
    assert info.value.holder.startswith(f"{child.pid}-")
    barrier.wait()
    child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL and lock.exists()  # the dead holder's file is still there
    with hold_lock(lock, wait=False):  # but no longer locked
        assert lock.read_text().startswith(f"{os.getpid()}-")
    assert not lock.exists()


def test_a_second_cogvid_train_into_a_busy_output_dir_refuses(tmp_path, tiny_t5_dir, monkeypatch):
    """Run B starts while run A is writing its first checkpoint into the same dir: B refuses in one line naming A,
    and A's step folders and `latest` are all A's."""
    clips = make_sat_dataset(tmp_path / "clips", n=2)
    out = tmp_path / "out{run}"  # braces: the refusal names the dir as it is
    extra = [f"data.root={clips}", "train.max_steps=2", "train.checkpoint_every=1", "train.validation.every=0"]
    cfg = compose(tiny_overrides(tiny_t5_dir, tmp_path / "unused", *extra), config_name="train")
    cfg.train.output_dir = str(out)
    refusals: list[str] = []
    save = ResumableCheckpoints.save

    def save_then_start_another(self, trainer, pl_module, step):
        save(self, trainer, pl_module, step)
        if not refusals:
            with pytest.raises(CogvidError) as info:
                run_train(cfg)
            refusals.append(str(info.value))

    monkeypatch.setattr(ResumableCheckpoints, "save", save_then_start_another)
    result = run_train(cfg)
    assert result.final_step == 2
    assert len(refusals) == 1 and "\n" not in refusals[0]
    assert f"{out} is the output dir of a cogvid-train run that is still going (pid {os.getpid()} on" in refusals[0]
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert steps == ["latest", "step-00000001", "step-00000002"]
    assert (out / "checkpoints" / "latest").read_text() == "step-00000002" and not (out / RUN_LOCK).exists()


# --- export -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_exports_to_one_out_refuse_or_the_last_wins_whole(tmp_path, overwrite, monkeypatch):
    """Both exports pass the `out` check before either publishes (a barrier in publish_folder): without overwrite the
    second to publish refuses and leaves the first one's folder; with it the last one's folder is `out`, whole."""
    from cogvid.interop.run import run_export

    out = tmp_path / "export"
    publish = cogvid.utils.files.publish_folder
    barrier_box = {}

    def publish_after_both(staged, target, replace=True):
        (staged / "writer").write_text(str(os.getpid()))
        barrier_box["barrier"].wait()
        return publish(staged, target, replace)

    monkeypatch.setattr(cogvid.utils.files, "publish_folder", publish_after_both)
    overrides = ["task=to_diffusers", "model=shapes", "parts=[scheduler]", f"out={out}", f"overwrite={overwrite}"]
    cfg = compose(overrides, config_name="export")

    def run(i: int, barrier):
        barrier_box["barrier"] = barrier
        run_export(cfg)
        return os.getpid()

    outcomes = together(2, run)
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["scheduler", "writer"]  # one export's files, nothing mixed in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staged or set-aside folder left
    winners = [pid for kind, pid in outcomes if kind == "ok"]
    if overwrite:
        assert len(winners) == 2 and int((out / "writer").read_text()) in winners
    else:
        assert len(winners) == 1 and int((out / "writer").read_text()) == winners[0]
        refusal = next(text for kind, text in outcomes if kind == "error")
        assert refusal.startswith(f"out={out} was written by another run while this one worked; pass overwrite=true")
