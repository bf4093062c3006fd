"""Run a Hydra entry point over the packaged config tree, with cogvid's error contract.

Composition errors (a misspelt key, an unknown config) and CogvidError in the task become one line on stderr
and exit code 2. Anything else is a bug in cogvid and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from cogvid.cli.common import fail, run_reporting_errors
from cogvid.cli.free_text import quote_free_text
from cogvid.config.compose import conf_dir, describe_config_error, register_schemas
from cogvid.utils.errors import CogvidError


def run_hydra_app(prog: str, config_name: str, task: Callable[[object], object]) -> None:
    import hydra

    register_schemas()
    # Let composition errors reach us instead of Hydra's own multi-line report and exit code 1.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        config_path = str(conf_dir())
    except CogvidError as ex:
        fail(prog, str(ex))

    def task_reporting(cfg):
        return run_reporting_errors(prog, lambda: task(cfg))

    sys.argv[1:] = quote_free_text(sys.argv[1:])  # prompts work as typed: a fox's tail, "quoted", a, b = c
    app = hydra.main(config_path=config_path, config_name=config_name, version_base="1.3")(task_reporting)
    try:
        app()
    except (HydraException, OmegaConfBaseException) as ex:
        fail(prog, describe_config_error(ex))
