"""Run a cogvid command line in this process and SIGKILL it at a chosen event (used by tests/test_crash_safety.py).

    python tests/crash_run.py POINT N cogvid-sample key=value ...

POINT picks the moment, counted over the whole process (Hydra's files included):
  fsync    just before the Nth fsync: a temp file or staged folder is complete but not yet renamed;
  replace  just before the Nth os.replace: some files of a run are in place, others not;
  link     just before the Nth os.link: a file claiming its name without replacing (a sample's files, a cache
           sample): the ones before are in place, this one and those after are not;
  rmtree   just before the Nth shutil.rmtree (e.g. after a folder swap, before the old folder is deleted);
  write    halfway through the Nth write() to a binary file that Python opened for writing (open, io.open,
           pathlib): a temp file is cut off;
  any      at the Nth of all the events above, whichever kind it is (a test draws N from the count of a whole run);
  never    no kill (the command runs to its end).
The kill is a real SIGKILL of this process: no finally block, atexit hook or signal handler runs. Just before it,
and when a run ends (any exit code), the last line on stderr is
`crash_run events: {"fsync": .., "replace": .., "rmtree": .., "write": .., "any": ..}`: how many of each the run met
(the one it dies at included), so that a test can choose a later kill point that a run of the same length reaches.
"""

from __future__ import annotations

import builtins
import importlib
import io
import json
import os
import shutil
import signal
import sys

ENTRY_POINTS = {
    "cogvid-sample": "cogvid.cli.sample",
    "cogvid-export": "cogvid.cli.export",
    "cogvid-train": "cogvid.cli.train",
}
KINDS = ("fsync", "replace", "link", "rmtree", "write")
COUNTS = dict.fromkeys((*KINDS, "any"), 0)
KILL: tuple[str, int] = ("never", 0)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def event(kind: str) -> bool:
    """Count one event of `kind`; True when it is the one to die at."""
    COUNTS[kind] += 1
    COUNTS["any"] += 1
    point, n = KILL
    if point in (kind, "any") and COUNTS[point] == n:
        report()  # how far the run got: the events up to this one
        return True
    return False


def report() -> None:
    print(f"crash_run events: {json.dumps(COUNTS)}", file=sys.stderr, flush=True)


def kill_before(module, name: str, kind: str) -> None:
    real = getattr(module, name)

    def counted(*args, **kwargs):
        if event(kind):
            die()
        return real(*args, **kwargs)

    setattr(module, name, counted)


class HalfWriteFile:
    """A file opened for writing whose write() is an event: at the chosen one it stores half of its bytes, then the
    process dies."""

    def __init__(self, file):
        self._file = file

    def write(self, data):
        if event("write"):
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


def count_binary_writes() -> None:
    real_open = builtins.open

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return HalfWriteFile(f) if "b" in mode and any(c in mode for c in "wax+") else f

    builtins.open = io.open = open_  # pathlib's write_bytes opens through io.open


def arm(point: str, n: int) -> None:
    """Count every event of this process from now on, and die at the `n`th `point` one (tests/cli_zygote.py arms a
    forked child with it; cogvid calls these functions through their modules, so hooks set after its import hold)."""
    global KILL
    if point not in (*KINDS, "any", "never"):
        raise SystemExit(f"unknown kill point {point}")
    KILL = (point, int(n))
    kill_before(os, "fsync", "fsync")
    kill_before(os, "replace", "replace")
    kill_before(os, "link", "link")
    kill_before(shutil, "rmtree", "rmtree")
    count_binary_writes()


def main() -> None:
    point, n, prog, *args = sys.argv[1:]
    arm(point, int(n))
    sys.argv = [prog, *args]
    try:
        importlib.import_module(ENTRY_POINTS[prog]).main()
    finally:
        report()


if __name__ == "__main__":
    main()
