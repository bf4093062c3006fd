"""`run_train(cfg)`: the testable core of cogvid-train. It plans the job (`cogvid.training.plan.plan_train`: every
check, once), starts this node's other processes when needed, and runs the task: fit (`cogvid.training.fit`, the
only one that imports Lightning), precompute the latent cache (`cogvid.training.precompute`) or train the VAE
(`cogvid.training.vae_module`)."""

from __future__ import annotations

from collections.abc import Sequence

from cogvid.config.schema import TrainTask
from cogvid.training.plan import TrainPlan, plan_train
from cogvid.training.precompute import run_precompute
from cogvid.training.strategies import end_process_group, start_local_workers


def run_train(cfg, deepspeed_strategy_class=None, relaunch: Sequence[str] | None = None, plan: TrainPlan | None = None):
    """Fit (task=fit: a TrainResult), fill the latent cache (task=precompute: None) or train the VAE (task=vae: a
    `cogvid.training.vae_module.VaeTrainResult`); with train.devices > 1 and no launcher around,
    this process starts the node's other ranks as `relaunch` + the job's overrides and is rank 0.

    `relaunch`: the command that runs this entry point again (cogvid-train passes `python -m` of its own module).
    `plan`: the job's plan when the caller made it (None: planned here)."""
    plan = plan or plan_train(cfg)
    if plan.task is TrainTask.vae:  # one process, no DiT
        from cogvid.training.vae_module import fit_vae

        return fit_vae(cfg, plan)
    workers = start_local_workers(cfg, plan.processes, plan.out_dir, relaunch)
    ok = False
    try:
        if plan.task is TrainTask.precompute:
            run_precompute(cfg, plan)
            result = None
        else:
            from cogvid.training.fit import fit

            result = fit(cfg, plan, deepspeed_strategy_class)
        ok = True
        return result
    finally:
        if workers is not None:
            workers.finish(ok)
        end_process_group()
