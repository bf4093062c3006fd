"""Files and folders that a reader sees whole or not at all: written under a temp name beside the target, fsynced,
then renamed onto it. An error or interrupt removes the temp name, so no half-written file or folder is left.

* `atomic_path`: the temp path for a writer that opens the file itself (ffmpeg); `write_atomic` for a file object.
* `write_files_atomic`: several files, renamed into place only after every one of them is written.
* `rename_no_replace` and `write_new`: a name that another process may take at the same time is taken only if free,
  never replaced (sample files, latent-cache entries, an export's `out` without overwrite).
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


def fsync_path(path: Path) -> None:
    """fsync a file's data, or a folder's entries (what was renamed or linked into it), by path."""
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
    tmp = temp_name(target)
    try:
        with writing(target):
            yield tmp
            fsync_path(tmp)
            os.replace(tmp, target)
            fsync_path(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def temp_name(target: Path) -> Path:
    """`.STEM.tmp-OWNER.SUFFIX` beside `target`: where this process writes it before it gets its name."""
    return target.with_name(f".{target.stem}.tmp-{owner_tag()}{target.suffix}")


def write_atomic(target: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write through `write(file)` to a temp name beside `target`, fsync, then rename onto `target`."""
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        write(f)


def write_new(target: str | os.PathLike, write: Callable[[BinaryIO], object]) -> bool:
    """Like `write_atomic`, but never replaces: the finished file takes the name `target` only if nothing has it
    (`rename_no_replace`). False, and nothing changed, when another process wrote `target` first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target)
    try:
        with writing(target):
            with open(tmp, "wb") as f:
                write(f)
            fsync_path(tmp)
            try:
                rename_no_replace(tmp, target)
            except FileExistsError:
                return False
            fsync_path(target.parent)
            return True
    finally:
        tmp.unlink(missing_ok=True)


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


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # <linux/fs.h>


def _renameat2(a: Path, b: Path, flags: int) -> bool:
    """Linux renameat2(a, b, flags); False where the system or the file system cannot, so the caller falls back.
    A failure of the rename itself is an OSError (FileExistsError for RENAME_NOREPLACE onto an existing name)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100  # <fcntl.h> AT_FDCWD
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (RENAME_EXCHANGE); False where that is not available."""
    return _renameat2(a, b, RENAME_EXCHANGE)


def rename_no_replace(src: Path, target: Path) -> None:
    """Rename `src` to `target` only if no entry has that name; FileExistsError (and `src` kept) if one has, so a
    name that another process took is never replaced, unlike with os.replace.

    A file is hard-linked to `target` and its old name unlinked (a link never replaces, also on NFS); a folder, or a
    file where the file system has no hard links, is renamed with RENAME_NOREPLACE. Where neither is available a
    folder is renamed with os.rename, which fails onto a folder that is not empty, and a file is renamed after a check
    that `target` is free: that last fallback keeps apart only writers that hold one lock (`cogvid.utils.locks`)."""
    if not src.is_dir():
        try:
            os.link(src, target)
        except FileExistsError:
            raise
        except OSError as ex:
            if ex.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
        else:
            os.unlink(src)
            return
    if _renameat2(src, target, RENAME_NOREPLACE):
        return
    if os.path.lexists(target) and not src.is_dir():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    try:
        os.rename(src, target)
    except OSError as ex:
        if ex.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
        raise


def publish_folder(staged: Path, out: Path, replace: bool = True) -> None:
    """Rename the finished folder `staged` onto `out`. A missing `out` is taken with a rename that never replaces.
    With `replace` an existing `out` is swapped with it in one step where the system can (then deleted); elsewhere it
    is moved aside first and deleted after the rename, and a kill in between leaves it as `.NAME.old-OWNER`, which
    `clean_stale` puts back. Runs that publish onto one `out` at once end with the last one's folder, whole.
    Without `replace` an existing `out` (another run's, finished meanwhile) is FileExistsError and stays as it is."""
    fsync_path(staged)
    old = out.parent / f".{out.name}.old-{owner_tag()}"
    while True:
        try:
            rename_no_replace(staged, out)
            break
        except FileExistsError:
            if not replace:
                raise
        try:
            if _exchange(staged, out):
                shutil.rmtree(staged, ignore_errors=True)  # now the old folder
                break
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        except FileNotFoundError:
            continue  # another run moved `out` away in between: try again
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    fsync_path(out.parent)


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike | None, overwrite: bool) -> Iterator[Path]:
    """Yield `.NAME.partial-OWNER` beside `out`; on success it becomes `out` (replacing it if overwrite), on any error
    or interrupt it is deleted, so no half-written `out` is ever left. A storage failure names the file under `out`.
    Of several runs into one `out` at once, the last to finish wins whole with overwrite; without it the first one
    to finish writes `out` and the others refuse in one line, their work deleted."""
    out = check_output_free(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.parent / f".{out.name}.partial-{owner_tag()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    try:
        with writing(out):
            yield staged
            try:
                publish_folder(staged, out, replace=overwrite)
            except FileExistsError:
                raise CogvidError(
                    f"out={out} was written by another run while this one worked; pass overwrite=true to replace it"
                ) from None
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
