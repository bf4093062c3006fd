"""SIGKILL at many points of cogvid-sample, cogvid-export and task=precompute (tests/crash_run.py's hooks kill the
real command line, in a process of its own, at a chosen file event): no file under a final name is ever cut off,
nothing finished is lost or changed, the next run removes the dead run's temp files and completes, and precompute
keeps what was already encoded."""

from __future__ import annotations

import hashlib
import json
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from PIL import Image
from safetensors.torch import load_file

from cogvid.shapes.dataset import write_dataset
from cogvid.utils.files import LEFTOVER, check_output_free, clean_stale, owner_tag
from cogvid.utils.media import read_mp4

KILLED = -signal.SIGKILL
RANDOM = random.Random(11)  # the "random" kills land at reproducible events


def run(point: str, n: int, prog: str, *args: str, cwd: Path) -> tuple[int, str, dict[str, int]]:
    """The command line armed with tests/crash_run.py's hooks, SIGKILLed by itself at the `n`th `point` event: (exit
    code, output, how many events of each kind it met up to its kill or its end). No kill depends on the clock. It
    runs in a process of its own, forked from the tests' command server (conftest.run_cli)."""
    proc = run_cli(prog, *args, cwd=cwd, crash=(point, n))
    log = proc.stdout + proc.stderr
    counts = re.findall(r"crash_run events: (\{.*?\})", proc.stderr)  # after a progress bar, on its line
    assert counts, f"{point} {n}: no event count; {log[-2000:]}"
    return proc.returncode, log, json.loads(counts[-1])


def killed(point: str, n: int, prog: str, *args: str, cwd: Path) -> dict[str, int]:
    """`run`, which must end in the kill; the events met up to it."""
    code, log, counts = run(point, n, prog, *args, cwd=cwd)
    assert code == KILLED, f"{point} {n}: exit code {code}, not the kill; {log[-2000:]}"
    return counts


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
    # fsync 1: the first MP4 is encoded, not yet renamed; write 1: half of the first latents file; link 5: the first
    # video's four files have their names, the second's do not; then at a random event of a whole run (every run
    # writes two videos; those after a kill also clean up: none is shorter than the link-5 run up to its kill).
    points = [("fsync", 1), ("write", 1), ("link", 5), ("any", None)]
    counts: dict[str, int] = {}
    for point, n in points:
        if n is None:
            n = RANDOM.randint(1, counts["any"])
        counts = killed(point, n, "cogvid-sample", *args, cwd=tmp_path)
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
    code, log, _ = run("never", 0, "cogvid-export", *EXPORT, f"out={out}", cwd=tmp_path)
    assert code == 0, log
    old = {p.relative_to(out): sha for p, sha in finished(out).items()}
    assert {"transformer/config.json", "vae/config.json"} <= {str(p) for p in old}

    again = [*EXPORT, f"out={out}", "overwrite=true", "dtype=fp16"]  # other bytes than the old export

    def staged() -> list[str]:
        return [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.")]

    seen = []
    # rmtree 2 (first, while no leftover is there to clean up): swapped in, the old folder not yet deleted; it reports
    # how many fsyncs came before, the last of them the staged folder's: fsync at that count kills with the staged
    # folder complete, not yet swapped in; write 4: in the middle of a shard; then at a random event of the run (the
    # runs after a kill also clean up: none is shorter than the rmtree-2 run up to its kill).
    counts = killed("rmtree", 2, "cogvid-export", *again, cwd=tmp_path)
    seen.append({p.relative_to(out): sha for p, sha in finished(out).items()})
    assert staged(), "the kill after the swap should have left the old folder under a staged name"
    for point, n in [("fsync", counts["fsync"]), ("write", 4), ("any", RANDOM.randint(1, counts["any"]))]:
        killed(point, n, "cogvid-export", *again, cwd=tmp_path)
        seen.append({p.relative_to(out): sha for p, sha in finished(out).items()})
        if point != "any":
            assert staged(), f"{point} {n}: the kill should have left a staged folder"
            assert seen[-1] == seen[-2], f"{point} {n}: killed before the swap, yet the export changed"

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
    # write 2: meta.json is in place, the first sample half written; link 4: meta.json and three samples have their
    # names (each takes it with a link that never replaces), the fourth not; then at a random event of the next run,
    # which writes the samples left, each with at least 3 events (an fsync, the link, the folder's fsync) beside its
    # writes.
    for point, n in [("write", 2), ("link", 4), ("any", None)]:
        if n is None:
            left = 6 - len([p for p in kept if p.parent.name == "samples"])
            n = RANDOM.randint(1, 3 * (1 + left))
        killed(point, n, "cogvid-train", *args, cwd=tmp_path)
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
