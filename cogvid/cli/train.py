"""cogvid-train: fine-tune CogVideoX (LoRA or full) with Lightning, or precompute its training latents.

The work is `cogvid.training.run.run_train(cfg)`; the job is planned first (`cogvid.training.plan.plan_train`,
whose option checks run before torch and Lightning are imported: a refused value costs a fraction of a second), before
Hydra makes its run dir, so a refused job writes nothing.
With train.devices > 1 and no torchrun around, it starts the node's other ranks by running this module again.
"""

from __future__ import annotations

import sys

from cogvid.cli.hydra_app import run_hydra_app


def _plan_first(cfg, run_dir):
    from cogvid.training.plan import plan_train

    return plan_train(cfg, run_dir)


def _task(cfg, planned):
    """Run the job; a sweep's job (no plan made before Hydra) is planned by `run_train`."""
    from cogvid.training.run import run_train

    run_train(cfg, relaunch=[sys.executable, "-m", "cogvid.cli.train"], plan=planned)


def main() -> None:
    run_hydra_app("cogvid-train", "train", _task, plan_first=_plan_first)


if __name__ == "__main__":
    main()
