"""`run_train(cfg)`: the testable core of cogvid-train. It plans the job (`cogvid.training.plan.plan_train`: every
check, once), starts this node's other processes when needed, and runs the task: fit (`cogvid.training.fit`, the
only one that imports Lightning), precompute the latent cache (`cogvid.training.precompute`) or train the VAE
(`cogvid.training.vae_module`).

One run at a time writes into an output dir: rank 0 holds `<out>/.cogvid-train.lock` (`cogvid.utils.locks`) from
before the first file to the end, and a second run into that dir, while the first is alive, refuses in one line. So
two runs never interleave their `checkpoints/step-N` folders, `latest`, SAT weights or validation videos. The lock
dies with its holder (even under SIGKILL): a crashed run's dir is free for `train.resume=auto` at once. Precompute
writes into `data.cache` and takes no lock (see `cogvid.training.precompute`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from cogvid.config.schema import TrainTask
from cogvid.training.plan import TrainPlan, plan_train
from cogvid.training.precompute import run_precompute
from cogvid.training.strategies import end_process_group, start_local_workers
from cogvid.utils.locks import hold_or_refuse

RUN_LOCK = ".cogvid-train.lock"


def _launch_rank() -> int:
    """This process's rank in its run, from its launcher, before Lightning sets up: RANK (torchrun), SLURM_PROCID
    (srun), LOCAL_RANK (the ranks cogvid-train starts itself); 0 when alone."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def run_train(cfg, deepspeed_strategy_class=None, relaunch: Sequence[str] | None = None, plan: TrainPlan | None = None):
    """Fit (task=fit: a TrainResult), fill the latent cache (task=precompute: None) or train the VAE (task=vae: a
    `cogvid.training.vae_module.VaeTrainResult`); with train.devices > 1 and no launcher around,
    this process starts the node's other ranks as `relaunch` + the job's overrides and is rank 0.

    `relaunch`: the command that runs this entry point again (cogvid-train passes `python -m` of its own module).
    `plan`: the job's plan when the caller made it (None: planned here)."""
    plan = plan or plan_train(cfg)
    alone = plan.out_dir is None or _launch_rank() != 0  # no output dir, or a rank of a run that rank 0 holds

    def refusal(holder: str) -> str:
        return (
            f"{plan.out_dir} is the output dir of a cogvid-train run that is still going ({holder}); wait for it to "
            "end or give this run another train.output_dir"
        )

    with contextlib.nullcontext() if alone else hold_or_refuse(plan.out_dir / RUN_LOCK, refusal):
        if plan.task is TrainTask.vae:  # one process, no DiT
            from cogvid.training.vae_module import fit_vae

            return fit_vae(cfg, plan)
        workers = start_local_workers(cfg, plan.processes, plan.out_dir, relaunch)
        ok = False
        try:
            if plan.task is TrainTask.fit:
                from cogvid.training.fit import fit

                result = fit(cfg, plan, deepspeed_strategy_class)
            else:
                run_precompute(cfg, plan)
                result = None
            ok = True
            return result
        finally:
            if workers is not None:
                workers.finish(ok)
            end_process_group()
