"""Run a cogvid command line in this process and SIGKILL it at a chosen point (used by tests/test_crash_safety.py).

    python tests/crash_run.py POINT N cogvid-sample key=value ...

POINT picks the moment, counted over the whole process (Hydra's files included):
  fsync    just before the Nth fsync: a temp file or staged folder is complete but not yet renamed;
  replace  just before the Nth os.replace: some files of a run are in place, others not;
  link     just before the Nth os.link: a file claiming its name without replacing (a sample's files, a cache
           sample): the ones before are in place, this one and those after are not;
  rmtree   just before the Nth shutil.rmtree (e.g. after a folder swap, before the old folder is deleted);
  write    halfway through the Nth write() to a binary file that Python opened for writing (open, io.open,
           pathlib): a temp file is cut off;
  never    no kill (the command runs to its end).
The kill is a real SIGKILL of this process: no finally block, atexit hook or signal handler runs.
"""

from __future__ import annotations

import builtins
import importlib
import io
import os
import shutil
import signal
import sys

ENTRY_POINTS = {
    "cogvid-sample": "cogvid.cli.sample",
    "cogvid-export": "cogvid.cli.export",
    "cogvid-train": "cogvid.cli.train",
}


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_before_nth(module, name: str, n: int) -> None:
    real = getattr(module, name)
    calls = 0

    def counted(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == n:
            die()
        return real(*args, **kwargs)

    setattr(module, name, counted)


class HalfWriteFile:
    """A file opened for writing whose `on_write`-th write() stores half of its bytes, then the process dies."""

    def __init__(self, file, on_write):
        self._file, self._on_write = file, on_write

    def write(self, data):
        if self._on_write():
            self._file.write(bytes(memoryview(data).cast("B")[: len(memoryview(data).cast("B")) // 2]))
            self._file.flush()
            die()
        return self._file.write(data)

    def __enter__(self):
        self._file.__enter__()
        return self

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)

    def __iter__(self):
        return iter(self._file)

    def __getattr__(self, name):
        return getattr(self._file, name)


def kill_in_nth_write(n: int) -> None:
    real_open = builtins.open
    writes = 0

    def is_nth() -> bool:
        nonlocal writes
        writes += 1
        return writes == n

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return HalfWriteFile(f, is_nth) if "b" in mode and any(c in mode for c in "wax+") else f

    builtins.open = io.open = open_  # pathlib's write_bytes opens through io.open


def main() -> None:
    point, n, prog, *args = sys.argv[1:]
    n = int(n)
    if point in ("fsync", "replace", "link"):
        kill_before_nth(os, point, n)
    elif point == "rmtree":
        kill_before_nth(shutil, "rmtree", n)
    elif point == "write":
        kill_in_nth_write(n)
    elif point != "never":
        raise SystemExit(f"unknown kill point {point}")
    sys.argv = [prog, *args]
    importlib.import_module(ENTRY_POINTS[prog]).main()


if __name__ == "__main__":
    main()
