"""SIGKILL at many points of cogvid-sample, cogvid-export and task=precompute (tests/crash_run.py kills the real
command line in a subprocess): no file under a final name is ever cut off, nothing finished is lost or changed, the
next run removes the dead run's temp files and completes, and precompute keeps what was already encoded."""

from __future__ import annotations

import hashlib
import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from cogvid.shapes.dataset import write_dataset
from cogvid.utils.files import LEFTOVER, check_output_free, clean_stale, owner_tag
from cogvid.utils.media import read_mp4

RUNNER = Path(__file__).with_name("crash_run.py")
KILLED = -signal.SIGKILL
RANDOM = random.Random(11)  # the timed kills land at reproducible "random" moments


def run(point: str, n: int, prog: str, *args: str, cwd: Path, kill_after: float | None = None):
    """The command line under tests/crash_run.py; with `kill_after`, SIGKILLed from outside after that many s."""
    cmd = [sys.executable, str(RUNNER), point, str(n), prog, *args]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.kill()
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out + err, time.monotonic() - started


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def finished(folder: Path) -> dict[Path, str]:
    """Every file under a final (non-dot) name below `folder`, checked to be whole, with its hash."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_dir() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.suffix == ".mp4":
            assert read_mp4(path).shape[0] > 1, path
        elif path.suffix == ".png":
            with Image.open(path) as picture:
                picture.load()
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            load_file(path)
        files[path] = digest(path)
    return files


def assert_unchanged(before: dict[Path, str]) -> None:
    for path, sha in before.items():
        assert path.is_file() and digest(path) == sha, f"{path} was lost or changed"


SAMPLE = [
    "model=shapes",
    "infer.prompt=a red circle moving right",
    "infer.num_videos_per_prompt=2",
    "infer.frame_strip=true",
    "infer.save_latents=true",
    "sampler.num_steps=4",
    "device=cpu",
]


def test_cogvid_sample_killed_anywhere_keeps_every_video_whole(tmp_path):
    samples = tmp_path / "out" / "samples"
    args = [*SAMPLE, f"infer.output_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    kept: dict[Path, str] = {}
    # fsync 1: the first MP4 is encoded, not yet renamed; write 1: half of the first latents file; link 5: the
    # first video's four files are in place, the second's are not; then a kill from outside at a random moment.
    points = [("fsync", 1, None), ("write", 1, None), ("link", 5, None), ("never", 0, RANDOM.uniform(1.0, 4.0))]
    for point, n, after in points:
        code, log, _ = run(point, n, "cogvid-sample", *args, cwd=tmp_path, kill_after=after)
        # a kill from outside may come after a fast run has ended: then it must have ended well
        assert code == KILLED or (after is not None and code == 0), f"{point} {n}: exit code {code}; {log[-2000:]}"
        now = finished(samples)
        assert_unchanged(kept)
        if point in ("fsync", "write"):
            assert leftovers(samples), "the kill should have left a temp file behind"
        kept = now
    assert len([p for p in kept if p.suffix == ".json"]) >= 1  # link 5: one whole video came before the kill

    code, log, _ = run("never", 0, "cogvid-sample", *args, cwd=tmp_path)
    assert code == 0, log
    assert leftovers(samples) == []  # the dead runs' temp files are gone
    assert_unchanged(kept)
    done = finished(samples)
    new = sorted(p.stem for p in set(done) - set(kept) if p.suffix == ".json")
    assert len(new) == 2 and all((samples / f"{stem}.mp4").is_file() for stem in new)


EXPORT = ["task=to_diffusers", "model=shapes", "parts=[transformer,vae,scheduler]", "max_shard_size=4MB"]


def test_cogvid_export_killed_anywhere_leaves_the_old_or_the_new_export(tmp_path):
    out = tmp_path / "export"
    code, log, seconds = run("never", 0, "cogvid-export", *EXPORT, f"out={out}", cwd=tmp_path)
    assert code == 0, log
    old = {p.relative_to(out): sha for p, sha in finished(out).items()}
    assert {"transformer/config.json", "vae/config.json"} <= {str(p) for p in old}

    again = [*EXPORT, f"out={out}", "overwrite=true", "dtype=fp16"]  # other bytes than the old export
    seen = []
    # write 4: in the middle of a shard; fsync 10: the staged folder is complete, not yet swapped in;
    # rmtree 2: swapped in, the old folder not yet deleted; then a kill from outside at a random moment.
    for point, n, after in [("write", 4, None), ("fsync", 10, None), ("rmtree", 2, None), ("never", 0, None)]:
        if point == "never":
            after = RANDOM.uniform(0.3, 0.9) * seconds
        code, log, _ = run(point, n, "cogvid-export", *again, cwd=tmp_path, kill_after=after)
        assert code in (KILLED, 0), f"{point} {n}: {log}"
        seen.append({p.relative_to(out): sha for p, sha in finished(out).items()})
    assert any(p.name.startswith(f".{out.name}.") for p in tmp_path.iterdir()), "no kill left a staged folder"

    code, log, _ = run("never", 0, "cogvid-export", *again, cwd=tmp_path)
    assert code == 0, log
    new = {p.relative_to(out): sha for p, sha in finished(out).items()}
    assert new != old and all(state in (old, new) for state in seen)
    assert leftovers(tmp_path) == []


@pytest.fixture(scope="module")
def shapes_clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    write_dataset(root, num_clips=6, seed=0, progress=False)
    return root


def test_precompute_killed_anywhere_resumes_and_keeps_what_was_encoded(tmp_path, shapes_clips):
    cache = tmp_path / "cache"
    args = ["model=shapes", "task=precompute", f"data.root={shapes_clips}", f"data.cache={cache}", "device=cpu"]
    args.append(f"hydra.run.dir={tmp_path / 'hydra'}")
    kept: dict[Path, str] = {}
    # write 2: meta.json is in place, the first sample half written; link 4: a few samples in place;
    # then a kill from outside at a random moment.
    for point, n, after in [("write", 2, None), ("link", 4, None), ("never", 0, 3.0)]:
        if after is not None:
            after = RANDOM.uniform(0.4, 1.0) * after
        code, log, _ = run(point, n, "cogvid-train", *args, cwd=tmp_path, kill_after=after)
        assert code == KILLED or (after is not None and code == 0), f"{point} {n}: exit code {code}; {log[-2000:]}"
        now = finished(cache)
        assert_unchanged(kept)
        if point == "write":
            assert leftovers(cache / "samples"), "the kill should have left a cut-off temp file behind"
        kept = now
    assert len([p for p in kept if p.parent.name == "samples"]) >= 3  # link 4: three samples were in place

    code, log, _ = run("never", 0, "cogvid-train", *args, cwd=tmp_path)
    assert code == 0, log
    before = len([p for p in kept if p.parent.name == "samples"])
    assert re.search(rf"wrote {6 - before}, kept {before} already there", log), log
    assert_unchanged(kept)
    assert len(list((cache / "samples").glob("[0-9]*.safetensors"))) == 6
    assert leftovers(cache) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_clean_stale_removes_only_what_dead_processes_of_this_host_left(tmp_path):
    dead, host = _dead_pid(), owner_tag().split("-", 1)[1]
    (tmp_path / f".0000_fox.tmp-{dead}-{host}.mp4").write_bytes(b"cut off")
    (tmp_path / f".cache.partial-{dead}-{host}").mkdir()
    (tmp_path / f".mine.tmp-{owner_tag()}.json").write_bytes(b"")  # this process is alive: kept
    (tmp_path / f".theirs.tmp-{dead}-otherhost.json").write_bytes(b"")  # another machine's: kept
    (tmp_path / ".hidden.json").write_bytes(b"")  # not a leftover name: kept
    removed = clean_stale(tmp_path)
    assert sorted(p.name for p in removed) == sorted(
        [f".0000_fox.tmp-{dead}-{host}.mp4", f".cache.partial-{dead}-{host}"]
    )
    assert len(list(tmp_path.iterdir())) == 3 and all(LEFTOVER.match(p.name) for p in removed)


def test_a_folder_moved_aside_by_a_killed_run_is_put_back(tmp_path):
    """Where the folder swap is not available, publish_folder renames the old export aside first; a kill before the
    new one is renamed in leaves no `out`. The next run's check puts the old one back and still refuses to overwrite
    it without overwrite=true."""
    dead, host = _dead_pid(), owner_tag().split("-", 1)[1]
    out = tmp_path / "export"
    aside = tmp_path / f".export.old-{dead}-{host}"
    aside.mkdir()
    (aside / "config.json").write_text("{}")
    (tmp_path / f".export.partial-{dead}-{host}").mkdir()
    with pytest.raises(Exception, match="already exists"):
        check_output_free(out, overwrite=False)
    assert (out / "config.json").read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == ["export"]
