"""cogvid-train: fine-tune CogVideoX (LoRA or full) with Lightning, or precompute its training latents.

The work is `cogvid.training.run.run_train(cfg)`; the job is planned first (`cogvid.training.plan.plan_train`,
whose option checks run before torch and Lightning are imported: a refused value costs a fraction of a second).
With train.devices > 1 and no torchrun around, it starts the node's other ranks by running this module again.
"""

from __future__ import annotations

import sys

from cogvid.cli.hydra_app import run_hydra_app


def _task(cfg):
    from cogvid.training.plan import plan_train

    plan = plan_train(cfg)
    from cogvid.training.run import run_train

    run_train(cfg, relaunch=[sys.executable, "-m", "cogvid.cli.train"], plan=plan)


def main() -> None:
    run_hydra_app("cogvid-train", "train", _task)


if __name__ == "__main__":
    main()
