"""cogvid-train: fine-tune CogVideoX (LoRA or full) with Lightning, or precompute its training latents.

The work is `cogvid.training.run.run_train(cfg)`; the job is planned first (`cogvid.training.plan.plan_train`,
whose option checks run before torch and Lightning are imported: a refused value costs a fraction of a second), before
Hydra makes its run dir, so a refused job writes nothing.
With train.devices > 1 and no torchrun around, it starts the node's other ranks by running this module again.
"""

from __future__ import annotations

import sys

from cogvid.cli.hydra_app import run_hydra_app

# A plan made before Hydra made the run dir (`plan_first`), with the config it was made from.
_planned = None


def _plan_first(cfg, run_dir):
    """Plan the job before Hydra writes anything, so a refused job leaves no run dir."""
    global _planned
    from cogvid.training.plan import plan_train

    _planned = (cfg, plan_train(cfg, run_dir))


def _task(cfg):
    from omegaconf import OmegaConf

    from cogvid.training.plan import output_dir, plan_train

    global _planned
    planned, _planned = _planned, None
    same = planned is not None and OmegaConf.to_container(planned[0]) == OmegaConf.to_container(cfg)
    if same and planned[1].out_dir is not None and planned[1].out_dir.resolve() != output_dir(cfg).resolve():
        same = False  # planned for another run dir
    plan = planned[1] if same else plan_train(cfg)
    from cogvid.training.run import run_train

    run_train(cfg, relaunch=[sys.executable, "-m", "cogvid.cli.train"], plan=plan)


def main() -> None:
    run_hydra_app("cogvid-train", "train", _task, plan_first=_plan_first)


if __name__ == "__main__":
    main()
