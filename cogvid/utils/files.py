"""Files and folders that a reader sees whole or not at all: written under a temp name beside the target, fsynced,
then renamed onto it. An error or interrupt removes the temp name, so no half-written file or folder is left.

* `atomic_path`: the temp path for a writer that opens the file itself (ffmpeg); `write_atomic` for a file object.
* `write_files_atomic`: several files, renamed into place only after every one of them is written.
* `staged_folder`: an output folder built under `.NAME.partial-PID`; `publish_folder` moves a finished staged folder
  onto its final name (also for training checkpoints, whose ranks share a fixed staged name).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from cogvid.utils.errors import CogvidError

log = logging.getLogger(__name__)


def _fsync(path: Path) -> None:
    """fsync a file's data, or a folder's entries (what was renamed into it), by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `target` (`.STEM.tmp-PID.SUFFIX`, keeping the suffix for writers that pick their
    format from it); when the block ends normally the file is fsynced and renamed onto `target`, otherwise deleted."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}{target.suffix}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(target: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write through `write(file)` to a temp name beside `target`, fsync, then rename onto `target`."""
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        write(f)


def write_files_atomic(files: Mapping[Path, bytes]) -> None:
    """Write every file under its temp name first, then rename them all into place (none when any write fails)."""
    with contextlib.ExitStack() as stack:
        for target, data in files.items():
            stack.enter_context(atomic_path(target)).write_bytes(data)


def check_output_free(out: str | os.PathLike | None, overwrite: bool) -> Path:
    """The output folder as a Path; refuses a missing `out=` and an existing one unless overwrite=true."""
    if not out:
        raise CogvidError("out is not set: give the folder to write, e.g. out=./CogVideoX-5b-diffusers")
    path = Path(out).expanduser()
    if path.exists() and not overwrite:
        raise CogvidError(f"out={path} already exists; pass overwrite=true to replace it")
    if path.exists() and not path.is_dir():
        raise CogvidError(f"out={path} is a file, not a folder")
    return path


def publish_folder(staged: Path, out: Path) -> None:
    """Rename the finished folder `staged` onto `out`. An existing `out` is moved aside first and deleted after the
    rename, so a failure in between leaves one of the two whole."""
    _fsync(staged)
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staged, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, out)
    _fsync(out.parent)


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike | None, overwrite: bool) -> Iterator[Path]:
    """Yield `.NAME.partial-PID` beside `out`; on success it becomes `out` (replacing it if overwrite), on any error
    or interrupt it is deleted, so no half-written `out` is ever left."""
    out = check_output_free(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    try:
        yield staged
        publish_folder(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    log.info("wrote %s", out)
