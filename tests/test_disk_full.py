"""A write the storage refuses (disk full, file size limit, quota) is one line naming the file, exit code 2, and leaves
nothing half-written: no temp file, no partial sample set, and an existing export untouched.

The commands run in a subprocess under RLIMIT_FSIZE: Python ignores SIGXFSZ, so a write past the limit fails with
EFBIG ("File too large"), as a full disk fails with ENOSPC."""

from __future__ import annotations

import errno
import hashlib
import resource
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli

from cogvid.shapes.dataset import write_dataset
from cogvid.utils.errors import CogvidError
from cogvid.utils.files import write_atomic


def run_limited(limit: int, prog: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return run_cli(prog, *args, cwd=cwd, preexec_fn=set_limit)


def error_lines(result: subprocess.CompletedProcess, prog: str) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: error:")]


def one_line_naming(result: subprocess.CompletedProcess, prog: str, path: Path) -> None:
    """Exit code 2 and one error line, the last one on stderr (above it only progress bars), naming `path`."""
    errors = error_lines(result, prog)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr[-3000:]
    assert errors[0].startswith(f"{prog}: error: cannot write {path}: File too large"), errors[0]


def tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_sample_on_a_full_disk_writes_no_part_of_a_video(tmp_path):
    """The MP4 (3 KB) fits under the limit, the frame strip PNG (55 KB) does not: the MP4 must not stay either."""
    out = tmp_path / "out"
    result = run_limited(
        16_000,
        "cogvid-sample",
        "model=shapes",
        "infer.prompt=a blue square moving up",
        "infer.frame_strip=true",
        "sampler.num_steps=4",
        f"infer.output_dir={out}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        cwd=tmp_path,
    )
    one_line_naming(result, "cogvid-sample", out / "samples" / "0000_a_blue_square_moving_up.png")
    assert list((out / "samples").iterdir()) == []


def test_export_on_a_full_disk_keeps_the_old_export(tmp_path):
    out = tmp_path / "export"
    args = ["task=to_diffusers", "model=shapes", "parts=[transformer,scheduler]", f"out={out}"]
    first = run_cli("cogvid-export", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = tree(out)
    result = run_limited(1_000_000, "cogvid-export", *args, "overwrite=true", "max_shard_size=4MB", cwd=tmp_path)
    one_line_naming(result, "cogvid-export", out / "transformer" / "diffusion_pytorch_model-00001-of-00006.safetensors")
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staged folder left


def test_precompute_on_a_full_disk_stops_at_the_sample_it_cannot_write(tmp_path):
    write_dataset(tmp_path / "data", num_clips=2, seed=0, progress=False)
    cache = tmp_path / "cache"
    result = run_limited(
        10_000,  # Hydra's files (4.5 KB) fit, a sample (29 KB) does not
        "cogvid-train",
        "model=shapes",
        "task=precompute",
        f"data.root={tmp_path / 'data'}",
        f"data.cache={cache}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        cwd=tmp_path,
    )
    one_line_naming(result, "cogvid-train", cache / "samples" / "00000000.safetensors")
    assert sorted(p.name for p in cache.rglob("*")) == ["meta.json", "samples"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_names_the_file_and_leaves_no_temp(tmp_path, code):
    def fill_up(f):
        f.write(b"half")
        raise OSError(code, "No space left on device" if code == errno.ENOSPC else "Disk quota exceeded")

    target = tmp_path / "meta.json"
    with pytest.raises(CogvidError, match=f"^cannot write {target}: "):
        write_atomic(target, fill_up)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("prog", ["cogvid-sample", "cogvid-train"])
def test_hydra_files_on_a_full_disk_are_one_line_and_taken_back(tmp_path, tmp_path_factory, prog):
    """Hydra writes .hydra/config.yaml and the job's log before the task starts (and after the job is planned, so
    the job must be one that plans well); a full disk there is one line naming the file, and the half-written files
    and new folders are removed."""
    if prog == "cogvid-sample":
        args = ["model=shapes", "infer.prompt=a red circle"]
    else:
        data = tmp_path_factory.mktemp("data")
        write_dataset(data, num_clips=1, seed=0, progress=False)
        cache = tmp_path_factory.mktemp("cache") / "latents"
        args = ["model=shapes", "task=precompute", f"data.root={data}", f"data.cache={cache}"]
    result = run_limited(1_000, prog, *args, cwd=tmp_path)
    errors = error_lines(result, prog)
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith(f"{prog}: error: cannot write {tmp_path / 'outputs'}"), errors[0]
    assert errors[0].endswith("/.hydra/config.yaml: File too large"), errors[0]
    assert list(tmp_path.iterdir()) == []
