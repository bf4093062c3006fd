"""Run a Hydra entry point over the packaged config tree, with cogvid's error contract.

Composition errors (a misspelt key, an unknown config) and CogvidError in the task become one line on stderr
and exit code 2. Anything else is a bug in cogvid and keeps its traceback.

A refused job also leaves nothing behind. Hydra makes the run dir (`outputs/DATE/TIME`, or `multirun/.../N`) with
`.hydra/*.yaml` and the job's log before the task starts, but calls its callbacks' `on_run_start` before that: there
a single run is planned (the entry point's `plan_first`, which checks everything that can be checked from the config),
so a refusal exits before Hydra writes anything. What cannot be checked first (a sweep's later job, a full disk) is
undone instead: `RunDirSnapshot` notes what exists where Hydra writes when it starts, and a refusal undoes what Hydra
wrote for the job since (`_undo_what_hydra_wrote`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf.errors import OmegaConfBaseException

from cogvid.cli.common import fail
from cogvid.cli.free_text import quote_free_text
from cogvid.config.compose import conf_dir, describe_config_error, register_schemas
from cogvid.utils.errors import CogvidError
from cogvid.utils.files import STORAGE_FULL

# Added to every command line's overrides: a Hydra override (in hydra.overrides.hydra, never in the job's config).
SNAPSHOT_CALLBACK = f"++hydra.callbacks.cogvid_run_dir_snapshot._target_={__name__}.RunDirSnapshot"
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra saves into hydra.output_subdir
MULTIRUN_FILE = "multirun.yaml"  # what Hydra's sweeper saves into the sweep dir

# What existed where Hydra writes when it started, by absolute path: the bytes of Hydra's own files (rewritten by a
# rerun into a used run dir), the size of other files (a log Hydra appends to), None for folders. None until
# RunDirSnapshot has run.
_before: dict[Path, bytes | int | None] | None = None
# The entry point's planner for a single run, called with (config without its hydra node, run dir) before Hydra makes
# the run dir, and the program name its refusals are reported under.
_plan_first: tuple[str, Callable[[object, Path], object]] | None = None
# What `plan_first` returned, with the config (as plain data) and the run dir it was made for.
_planned: tuple[object, Path, object] | None = None


def _absolute(path) -> Path:
    return Path(os.path.abspath(str(path)))


def _state(path: Path) -> bytes | int | None:
    if path.is_symlink() or not path.is_file():
        return None
    return path.read_bytes() if path.name in HYDRA_FILES else path.stat().st_size


def _listing(folder: Path, output_subdir: str | None) -> dict[Path, bytes | int | None]:
    """`folder`, its entries and those of its output subdir, where they exist."""
    if not folder.is_dir():
        return {}
    paths = [folder, *folder.iterdir()]
    if output_subdir is not None and (folder / output_subdir).is_dir():
        paths += (folder / output_subdir).iterdir()
    return {path: _state(path) for path in paths}


class RunDirSnapshot(Callback):
    """Notes what exists in and above the run dir (or the sweep dir and its job dirs) before Hydra writes there."""

    @staticmethod
    def _note(folder, output_subdir: str | None, job_dirs: bool) -> None:
        global _before
        root = _absolute(folder)
        found = {parent: None for parent in root.parents if parent.exists()} | _listing(root, output_subdir)
        if job_dirs and root.is_dir():
            for job_dir in [p for p in root.iterdir() if p.is_dir()]:
                found |= _listing(job_dir, output_subdir)
        _before = found

    def on_run_start(self, config, **kwargs) -> None:
        self._note(config.hydra.run.dir, config.hydra.output_subdir, job_dirs=False)
        if _plan_first is not None:
            _plan_before_run_dir(config)

    def on_multirun_start(self, config, **kwargs) -> None:
        self._note(config.hydra.sweep.dir, config.hydra.output_subdir, job_dirs=True)


def _plan_before_run_dir(config) -> None:
    """Plan the run from its config (without the hydra node, as the task gets it) before Hydra writes anything; a
    refusal is one line and exit 2 here (Hydra turns a callback's exception into a warning, not its SystemExit)."""
    import copy

    from omegaconf import OmegaConf, open_dict

    global _planned
    prog, plan = _plan_first
    task_cfg = copy.deepcopy(config)
    with open_dict(task_cfg):
        del task_cfg["hydra"]
    run_dir = _absolute(config.hydra.run.dir)
    try:
        _planned = (OmegaConf.to_container(task_cfg), run_dir, plan(task_cfg, run_dir))
    except CogvidError as ex:
        fail(prog, str(ex))
    except OmegaConfBaseException as ex:
        key = getattr(ex, "full_key", None)
        fail(prog, describe_config_error(ex) + (f" (at {key})" if key else ""))


def _take_planned(cfg):
    """The plan made before Hydra made the run dir, when it is this job's (the same config, the same run dir), else
    None; it is taken once."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    global _planned
    planned, _planned = _planned, None
    if planned is None or not HydraConfig.initialized():
        return None
    config, run_dir, plan = planned
    same_dir = _absolute(HydraConfig.get().runtime.output_dir) == run_dir
    return plan if same_dir and config == OmegaConf.to_container(cfg) else None


def _close_log_files(folder: Path) -> list[Path]:
    """Close and detach the logging FileHandlers writing under `folder`; returns their files."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    closed = []
    for logger in [lg for lg in loggers if isinstance(lg, logging.Logger)]:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and _absolute(handler.baseFilename).is_relative_to(folder):
                handler.close()
                logger.removeHandler(handler)
                closed.append(_absolute(handler.baseFilename))
    return closed


def _undo(path: Path) -> None:
    """Put one file Hydra wrote back as it was before: removed if it is new, its old bytes, or its old length."""
    if path.is_symlink() or not path.is_file():
        return
    old = _before.get(path)
    if path not in _before:
        path.unlink()
    elif isinstance(old, bytes) and path.read_bytes() != old:
        path.write_bytes(old)
    elif isinstance(old, int) and path.stat().st_size > old:
        os.truncate(path, old)


def _undo_what_hydra_wrote() -> None:
    """After a refusal, undo what Hydra wrote for the job: its `.hydra/*.yaml` and its log are removed, or put back
    as they were in a used run dir; then the new folders that held them (and, in a sweep that wrote nothing else, the
    sweep dir's new multirun.yaml) are removed from the job dir up, each only when empty, as are the folders in a new
    job dir that hold no file (the job dir is the task's default output dir). Nothing else is touched."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if _before is None or not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    job_dir = _absolute(hc.runtime.output_dir)
    sweep_dir = _absolute(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    hydra_dir = job_dir / hc.output_subdir if hc.output_subdir is not None else job_dir
    for path in _close_log_files(job_dir) + [hydra_dir / name for name in HYDRA_FILES]:
        _undo(path)
    if hydra_dir != job_dir and hydra_dir not in _before:
        with contextlib.suppress(OSError):
            hydra_dir.rmdir()  # only an empty folder
    if job_dir not in _before:  # this job's own folder: the task's new folders in it that hold no file go too
        inside = sorted((Path(folder) for folder, _, _ in os.walk(job_dir)), key=lambda p: -len(p.parts))[:-1]
        for folder in inside:  # deepest first; the job dir itself last, below
            with contextlib.suppress(OSError):
                folder.rmdir()  # only an empty folder
    for folder in (job_dir, *job_dir.parents):
        if folder in _before:
            return
        multirun_file = folder / MULTIRUN_FILE
        if folder == sweep_dir and multirun_file not in _before and list(folder.iterdir()) == [multirun_file]:
            multirun_file.unlink()  # the sweep wrote nothing else: this was its first job
        try:
            folder.rmdir()  # only an empty folder
        except OSError:
            return


def _frames(ex: BaseException) -> list:
    """The frames of `ex`'s traceback, outermost first."""
    frames, tb = [], ex.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


def _file_being_written(ex: BaseException) -> str:
    """The file a failed write was for, read from the traceback's innermost frame that names one (Hydra's
    `_save_config(cfg, filename, output_dir)`, or a `path` / `file` local); else the run dir in words."""
    for frame in reversed(_frames(ex)):
        names = frame.f_locals
        if isinstance(names.get("filename"), str) and isinstance(names.get("output_dir"), str | os.PathLike):
            return str(Path(names["output_dir"]) / names["filename"])
        for key in ("path", "file", "filename"):
            if isinstance(names.get(key), str | os.PathLike):
                return str(names[key])
    return "a file of Hydra's run dir (hydra.run.dir)"


def _refuse(prog: str, message: str) -> NoReturn:
    _undo_what_hydra_wrote()
    fail(prog, message)


def _with_snapshot_callback(prog: str, argv: list[str]) -> list[str]:
    """`argv` with SNAPSHOT_CALLBACK added to its overrides, parsed first with Hydra's own parser so that an unknown
    flag (or an override after `-m`) is one line instead of its usage text."""
    from hydra._internal.utils import get_args_parser  # what hydra.main parses sys.argv with

    def error(message: str) -> NoReturn:
        hint = "flags such as -m go before the overrides; " if message.startswith("unrecognized") else ""
        fail(prog, f"{message} ({hint}see {prog} --help)")

    parser = get_args_parser()
    parser.error = error
    args = parser.parse_args(argv)
    modes = [args.run, args.multirun, args.cfg, args.info, args.shell_completion]
    if sum(mode not in (None, False) for mode in modes) > 1:  # what hydra.main raises as a ValueError
        error("only one of --run, --multirun, --cfg, --info and --shell-completion can be given")
    overrides = args.overrides
    # argparse takes the overrides as one run of arguments: ours goes at its end (first, before any flag, if there
    # is none), never after a flag such as --info, whose optional value it would become
    n = len(overrides)
    at = next((i + n for i in range(len(argv) - n, -1, -1) if argv[i : i + n] == overrides), 0) if n else 0
    return [*argv[:at], SNAPSHOT_CALLBACK, *argv[at:]]


def run_hydra_app(
    prog: str,
    config_name: str,
    task: Callable[[object], object],
    plan_first: Callable[[object, Path], object] | None = None,
) -> None:
    """Run `task(cfg)` as a Hydra app over the packaged `config_name`; `plan_first(cfg, run_dir)`, when given, plans a
    single run before Hydra makes its run dir (see the module doc), and the task is `task(cfg, plan)`: that plan when
    it was made for this job, else None (a sweep's job, or a run `plan_first` did not plan)."""
    import hydra

    global _plan_first
    _plan_first = (prog, plan_first) if plan_first is not None else None
    register_schemas()
    # Let composition errors reach us instead of Hydra's own multi-line report and exit code 1.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # A log line that cannot be written (a full disk) is dropped instead of printing logging's traceback; the write
    # that fails for the run's own files is reported as one line.
    logging.raiseExceptions = False
    try:
        config_path = str(conf_dir())
    except CogvidError as ex:
        fail(prog, str(ex))

    def task_reporting(cfg):
        try:
            return task(cfg) if plan_first is None else task(cfg, _take_planned(cfg))
        except CogvidError as ex:
            _refuse(prog, str(ex))
        except OmegaConfBaseException as ex:  # a value the config cannot give, e.g. an interpolation to nothing
            key = getattr(ex, "full_key", None)
            _refuse(prog, describe_config_error(ex) + (f" (at {key})" if key else ""))

    # prompts work as typed: a fox's tail, "quoted", a, b = c
    sys.argv[1:] = _with_snapshot_callback(prog, quote_free_text(sys.argv[1:]))
    app = hydra.main(config_path=config_path, config_name=config_name, version_base="1.3")(task_reporting)
    try:
        app()
    except (HydraException, OmegaConfBaseException) as ex:
        fail(prog, describe_config_error(ex))
    except BrokenPipeError:  # the reader left early, as `cogvid-sample --help | head` does: no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's advice: nothing more to flush
        sys.exit(1)
    except OSError as ex:
        if ex.errno not in STORAGE_FULL:
            raise
        _refuse_storage_full(prog, ex)


def _refuse_storage_full(prog: str, ex: OSError) -> NoReturn:
    """Hydra's own files (.hydra/*.yaml, the job's log) on a full disk: f.write's error names no file. Hydra has
    dropped its job config by now; the failed run_job's frame still holds it, for undoing what it wrote."""
    where = ex.filename or _file_being_written(ex)
    job_config = next((f.f_locals.get("config") for f in _frames(ex) if f.f_code.co_name == "run_job"), None)
    if job_config is not None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(job_config)
    _refuse(prog, f"cannot write {where}: {ex.strerror}")
