"""cogvid-sample: prompts (and images) to MP4 videos with any CogVideoX variant, from one composed config.

The work is `cogvid.inference.run.run_sample(cfg)`; this module is the command line around it.
"""

from __future__ import annotations

import os
import sys

from cogvid.cli.hydra_app import run_hydra_app
from cogvid.config.checks import check_values


def _task(cfg):
    check_values(cfg)  # before torch is imported: a refused option value costs a fraction of a second
    from cogvid.inference.run import run_sample

    return run_sample(cfg)


def main() -> None:
    if int(os.environ.get("RANK", 0)) > 0:
        # Under torchrun only rank 0 keeps a Hydra run dir; the others log to the console and write into rank 0's.
        sys.argv += ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=stdout"]
    run_hydra_app("cogvid-sample", "sample", _task)


if __name__ == "__main__":
    main()
