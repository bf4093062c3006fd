"""A fork server for the command lines the tests run (used by conftest.run_cli): it imports the three commands and
what their tasks import (torch, Hydra, Lightning, ...) once, then forks one child per request, which runs the command
as its console script would, in a process of its own: its own working dir, environment, stdin/stdout/stderr (files),
argv, exit code (SystemExit, or the signal that killed it) and a fresh copy of every module's state. What a child
saves against a fresh `cogvid-*` process is only the 3-5 s of imports.

Requests and answers are JSON lines on this process's stdin and stdout:
    {"prog": "cogvid-sample", "argv0": "...", "args": [...], "cwd": "...", "env": {...},
     "stdin": PATH, "stdout": PATH, "stderr": PATH}
    -> {"pid": PID}, then {"returncode": CODE}
A request may also carry:
    "script": PATH     run this Python file as __main__ (as `python PATH args`) instead of "prog";
    "ranks": N         start the command as N ranks of one node, as `torchrun --nproc_per_node N` does (see
                       `_launch_ranks`); PID is then the launcher's, the leader of the ranks' process group;
    "preload": [...]   modules this process imports (once, before forking) for the command, e.g. deepspeed.
The tests keep real console-script subprocesses where the process itself is under test (kills, resource limits,
what is imported before a refusal, --help of each command), and one real torchrun run.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import io
import json
import os
import runpy
import signal
import sys
import traceback

ENTRY_POINTS = {
    "cogvid-sample": "cogvid.cli.sample",
    "cogvid-export": "cogvid.cli.export",
    "cogvid-train": "cogvid.cli.train",
}
# What the commands' tasks import after their option checks: imported here once, before any child is forked.
PRELOAD = (
    *ENTRY_POINTS.values(),
    "cogvid.inference.run",
    "cogvid.inference.pipeline",
    "cogvid.inference.frame_strip",
    "cogvid.sat.loading",
    "cogvid.models.t5",
    "cogvid.training.plan",
    "cogvid.training.run",
    "cogvid.training.precompute",
    "cogvid.interop.run",
)
# ... and what a run imports when it loads its text encoder (cogvid.models.t5): transformers' T5, 2-3 s a run. The
# Hugging Face libraries read a few environment variables once, when imported (HF_HUB_DISABLE_PROGRESS_BARS, ...):
# conftest.run_cli runs a command line whose environment sets one of IMPORT_TIME_ENV otherwise than this process's
# as its console script.
PRELOAD_ATTRIBUTES = (("transformers", ("T5Config", "T5EncoderModel", "T5Tokenizer")),)
IMPORT_TIME_ENV = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_")


def _stdio(request: dict) -> None:
    """Point fds 0, 1 and 2 at the request's files, and sys.std* at them as Python sets them up for a child with
    PYTHONUNBUFFERED=1 (run_cli's environment): UTF-8, stderr with backslashreplace, writes go straight through."""
    for fd, key, flags in ((0, "stdin", os.O_RDONLY), (1, "stdout", os.O_WRONLY), (2, "stderr", os.O_WRONLY)):
        opened = os.open(request[key], flags)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), "utf-8")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), "utf-8", write_through=True, line_buffering=True
    )
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), "utf-8", "backslashreplace", write_through=True, line_buffering=True
    )


def _run(request: dict) -> int:
    """Run the request's command in this process, as its console script (or `python script`) would: its exit code."""
    if "OMP_NUM_THREADS" in os.environ:  # what torch reads when a fresh process starts
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    script = request.get("script")
    sys.argv = [script or request["argv0"], *request["args"]]
    if request.get("crash"):  # tests/crash_run.py's kill point: counted from here, as that runner counts
        import crash_run

        crash_run.arm(*request["crash"])
    code = 1
    try:
        if script:
            sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python script` puts its folder first
            runpy.run_path(script, run_name="__main__")
        else:
            importlib.import_module(ENTRY_POINTS[request["prog"]]).main()
        code = 0
    except SystemExit as ex:  # as the interpreter ends on an uncaught SystemExit
        if ex.code is None:
            code = 0
        elif isinstance(ex.code, int):
            code = ex.code
        else:
            print(ex.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    if request.get("crash"):
        crash_run.report()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    return code


def _launch_ranks(request: dict) -> int:
    """What `torchrun --standalone --nproc_per_node N` does for a command: N children with the environment torchrun
    gives its workers (ranks, world size, a rendezvous on a free local port, OMP_NUM_THREADS=1 unless set; not its
    agent's store or error files, since no agent runs), all writing to the same stdout and stderr; when one fails,
    the others are killed. The first failing rank's exit code, or 0."""
    from cogvid.training.strategies import free_port  # preloaded: cogvid.training.run imports it

    ranks = request["ranks"]
    common = {
        "MASTER_ADDR": "localhost",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(ranks),
        "LOCAL_WORLD_SIZE": str(ranks),
        "GROUP_RANK": "0",
        "GROUP_WORLD_SIZE": "1",
        "ROLE_NAME": "default",
        "ROLE_WORLD_SIZE": str(ranks),
        "TORCHELASTIC_RUN_ID": "cli_zygote",
        "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": "0",
        "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    }
    os.environ.update(common)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.setpgid(0, 0)  # conftest kills the whole group when a run hangs
    pids = []
    for rank in range(ranks):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), ROLE_RANK=str(rank))
                code = _run(request)
            finally:
                os._exit(code & 0xFF)
        pids.append(pid)
    failed = 0
    while pids:
        pid, status = os.wait()
        pids.remove(pid)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 and not failed:
            failed = code
            for other in pids:
                os.kill(other, signal.SIGKILL)
    return failed


def _child(request: dict, control: list[int]) -> None:
    """Run the command (or its ranks) in this forked process and leave with its exit code; never returns."""
    code = 1
    try:
        for fd in control:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        _stdio(request)
        code = _launch_ranks(request) if request.get("ranks") else _run(request)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code & 0xFF)


def main() -> None:
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what an import prints (deepspeed logs to stdout) goes to this process's log, not to the answers
    control = [requests.fileno(), answers.fileno()]
    for module in PRELOAD:
        importlib.import_module(module)
    for module, names in PRELOAD_ATTRIBUTES:  # a lazy module's attributes import their submodules
        for name in names:
            getattr(importlib.import_module(module), name)
    gc.freeze()  # a child's collections skip what is here already: no copy-on-write of those pages
    print(json.dumps({"ready": True}), file=answers)
    while line := requests.readline():
        request = json.loads(line)
        for module in request.get("preload") or ():
            importlib.import_module(module)
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            _child(request, control)
        print(json.dumps({"pid": pid}), file=answers)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), file=answers)


if __name__ == "__main__":
    main()
