"""A lock file that keeps cogvid's processes apart in one folder: `hold_lock(path)`.

The lock is `fcntl.flock` on `path`, so the kernel drops it when its holder dies by any means (SIGKILL, power loss):
a dead run's lock file never blocks a later one, and there is no pid to guess about. The holder writes its
`PID-HOST` into the file, only to name it in a refusal. The file is deleted when the lock is released; a process that
opened it just before gets a lock on a deleted file, notices (the path names another file now, or none) and tries
again, so two processes never both hold the lock of one path.

flock keeps processes of one host apart on a local file system, and those of several hosts on NFS (Linux maps it
onto NFS byte-range locks).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from cogvid.utils.errors import CogvidError
from cogvid.utils.files import owner_tag


class LockHeld(Exception):
    """`hold_lock(wait=False)` found the lock held; `holder` is the `PID-HOST` it wrote (empty if not yet written)."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder or 'another process'}")
        self.path, self.holder = path, holder


def _lock(path: Path, wait: bool) -> int:
    """An open descriptor of `path` that holds its lock (see the module doc); LockHeld when not `wait` and taken."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            try:
                holder = path.read_text(encoding="utf-8", errors="replace").strip()
            except OSError:
                holder = ""
            raise LockHeld(path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            here = os.stat(path)
        except FileNotFoundError:
            here = None
        mine = os.fstat(fd)
        if here is not None and (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)  # the holder before us deleted this file as it let go: lock the one now under that name


@contextlib.contextmanager
def hold_lock(path: str | os.PathLike, wait: bool = True) -> Iterator[None]:
    """Hold the lock of `path` for the block: wait for it, or raise LockHeld at once when `wait` is false."""
    path = Path(path)
    fd = _lock(path, wait)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, owner_tag().encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still held: nobody can hold a lock on this name in between
        os.close(fd)


@contextlib.contextmanager
def hold_or_refuse(path: Path, refusal: Callable[[str], str]) -> Iterator[None]:
    """Hold the lock of `path` (its folder made) for the block, or refuse at once in one line, `refusal(holder)`
    ("pid N on HOST"), when a live process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(hold_lock(path, wait=False))
        except LockHeld as ex:
            pid, _, host = ex.holder.partition("-")
            raise CogvidError(refusal(f"pid {pid} on {host}" if host else "another process")) from None
        yield
