"""Files and folders that a reader sees whole or not at all: written under a temp name beside the target, fsynced,
then renamed onto it. An error or interrupt removes the temp name, so no half-written file or folder is left.

* `atomic_path`: the temp path for a writer that opens the file itself (ffmpeg); `write_atomic` for a file object.
* `write_files_atomic`: several files, renamed into place only after every one of them is written.
* `staged_folder`: an output folder built under `.NAME.partial-OWNER`; `publish_folder` moves a finished staged
  folder onto its final name (also for training checkpoints, whose ranks share a fixed staged name).
* `clean_stale`: the leftovers of processes that died (SIGKILL, power loss) before they could clean up: their temp files
  and staged folders are deleted, and a folder that was moved aside (`.NAME.old-OWNER`) to be replaced is put back when
  the replacement never arrived.
* A write that fails because the disk is full, the file is over the size limit, the quota is spent or the file system
  is read-only is one `CogvidError` line naming the file (`writing`).

OWNER is `PID-HOST`: a leftover is stale only when its host is this one and its process is gone, so ranks on other
machines that share the folder keep their files.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import shutil
import socket
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


# errno values that mean "the storage refused the write", not a bug: disk full, file size limit (RLIMIT_FSIZE), quota.
STORAGE_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


def owner_tag() -> str:
    """`PID-HOST` of this process, for the names of its temp files and staged folders."""
    return f"{os.getpid()}-{re.sub(r'[^A-Za-z0-9]', '_', socket.gethostname())[:40] or 'host'}"


def _storage_failure(ex: BaseException) -> str | None:
    """Why a write failed, when the storage refused it; None for any other error (those keep their traceback)."""
    if isinstance(ex, OSError) and ex.errno in STORAGE_FULL:
        return ex.strerror or os.strerror(ex.errno)
    # torch's zip writer reports a short write without errno: "PytorchStreamWriter failed writing file ..." or
    # "[enforce fail at inline_container.cc] unexpected pos N vs M".
    text = str(ex)
    if isinstance(ex, RuntimeError) and ("PytorchStreamWriter" in text or "inline_container" in text):
        return "the write stopped short (disk full or over the file size limit?)"
    return None


@contextlib.contextmanager
def writing(target: str | os.PathLike) -> Iterator[None]:
    """A storage failure (disk full, size limit, quota, read-only) inside the block is one line naming `target`."""
    try:
        yield
    except (OSError, RuntimeError) as ex:
        reason = _storage_failure(ex)
        if reason is None:
            raise
        raise CogvidError(f"cannot write {target}: {reason}") from None


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `target` (`.STEM.tmp-OWNER.SUFFIX`, keeping the suffix for writers that pick their
    format from it); when the block ends normally the file is fsynced and renamed onto `target`, otherwise deleted."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp-{owner_tag()}{target.suffix}")
    try:
        with writing(target):
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
    """The output folder as a Path; refuses a missing `out=` and an existing one unless overwrite=true. A folder that
    a killed run had moved aside to replace it is first put back (`clean_stale`)."""
    if not out:
        raise CogvidError("out is not set: give the folder to write, e.g. out=./CogVideoX-5b-diffusers")
    path = Path(out).expanduser()
    if path.parent.is_dir():
        clean_stale(path.parent, path.name)
    if path.exists() and not overwrite:
        raise CogvidError(f"out={path} already exists; pass overwrite=true to replace it")
    if path.exists() and not path.is_dir():
        raise CogvidError(f"out={path} is a file, not a folder")
    return path


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE); False where the system or the file system
    cannot, so the caller falls back to two renames."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2  # <fcntl.h> AT_FDCWD, <linux/fs.h> RENAME_EXCHANGE
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish_folder(staged: Path, out: Path) -> None:
    """Rename the finished folder `staged` onto `out`. An existing `out` is swapped with it in one step where the
    system can (then deleted); elsewhere it is moved aside first and deleted after the rename, and a kill in between
    leaves it as `.NAME.old-OWNER`, which `clean_stale` puts back."""
    _fsync(staged)
    if out.exists() and _exchange(staged, out):
        shutil.rmtree(staged, ignore_errors=True)  # now the old folder
    elif out.exists():
        old = out.parent / f".{out.name}.old-{owner_tag()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staged, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, out)
    _fsync(out.parent)


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike | None, overwrite: bool) -> Iterator[Path]:
    """Yield `.NAME.partial-OWNER` beside `out`; on success it becomes `out` (replacing it if overwrite), on any error
    or interrupt it is deleted, so no half-written `out` is ever left. A storage failure names the file under `out`."""
    out = check_output_free(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.parent / f".{out.name}.partial-{owner_tag()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    try:
        with writing(out):
            yield staged
            publish_folder(staged, out)
    except CogvidError as ex:
        shutil.rmtree(staged, ignore_errors=True)
        raise CogvidError(str(ex).replace(str(staged), str(out))) from None
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    log.info("wrote %s", out)


# `.NAME.tmp-OWNER[.SUFFIX]` (atomic_path), `.NAME.partial-OWNER` (staged_folder), `.NAME.old-OWNER` (publish_folder).
LEFTOVER = re.compile(
    r"^\.(?P<name>.+)\.(?P<kind>tmp|partial|old)-(?P<pid>\d+)-(?P<host>[A-Za-z0-9_]+)(?P<suffix>\.[^.]+)?$"
)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temp files and staged folders in `folder` that processes of this host left when they died (only
    those of the entry `name` when given), and put back a folder `.NAME.old-OWNER` that was moved aside for a
    replacement that never arrived. Returns what was removed or restored."""
    folder = Path(folder)
    host = owner_tag().split("-", 1)[1]
    done = []
    for path in sorted(folder.iterdir()):
        m = LEFTOVER.match(path.name)
        if m is None or m["host"] != host or _process_alive(int(m["pid"])):
            continue
        target = folder / (m["name"] + (m["suffix"] or ""))
        if name is not None and target.name != name:
            continue
        if m["kind"] == "old" and not target.exists():
            os.replace(path, target)  # killed between moving the old folder aside and moving the new one in
            log.warning("put back %s: the run that was replacing it was interrupted", target)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        done.append(path)
    if done:
        log.info("removed %d leftovers of interrupted runs in %s", len(done), folder)
    return done
