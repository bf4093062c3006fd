"""cogvid-sample: prompts (and images) to MP4 videos with any CogVideoX variant, from one composed config.

The work is `cogvid.inference.run.run_sample(cfg)`; this module is the command line around it. A single run is planned
before Hydra makes its run dir (`plan_first`), so a refused run writes nothing.
"""

from __future__ import annotations

import os
import sys

from cogvid.cli.hydra_app import run_hydra_app


def _task(cfg, planned):
    from cogvid.inference.run import run_sample

    return run_sample(cfg, plan=planned)


def _plan_first(cfg, run_dir):
    """A single run's plan; under torchrun each rank plans in its job (the ranks agree on rank 0's dir there)."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        return None
    from cogvid.inference.plan import plan_sample

    return plan_sample(cfg, run_dir=run_dir)


def main() -> None:
    if int(os.environ.get("RANK", 0)) > 0:
        # Under torchrun only rank 0 keeps a Hydra run dir; the others log to the console and write into rank 0's.
        sys.argv += ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=stdout"]
    run_hydra_app("cogvid-sample", "sample", _task, plan_first=_plan_first)


if __name__ == "__main__":
    main()
