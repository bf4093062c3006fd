"""An output folder that appears whole or not at all: built under a temporary name beside it, then renamed."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from cogvid.utils.errors import CogvidError

log = logging.getLogger(__name__)


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


@contextlib.contextmanager
def staged_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield `.NAME.partial-PID` beside `out`; on success it becomes `out` (replacing it if overwrite), on any
    error or interrupt it is deleted, so no half-written `out` is ever left."""
    out = check_output_free(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    try:
        yield staged
        if out.exists():  # overwrite=true: move the old folder aside first, so a failure keeps one of them whole
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(staged, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    log.info("wrote %s", out)
