"""`run_train(cfg)`: the testable core of cogvid-train. It dispatches the task: fit (`cogvid.training.fit`, the only
one that imports Lightning), precompute the latent cache (`cogvid.training.precompute`) or train the VAE
(`cogvid.training.vae_module`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from cogvid.config.checks import check_values
from cogvid.config.schema import TrainTask
from cogvid.models.frozen import check_vae_file
from cogvid.training.data import VideoClips, clip_spec, find_clips
from cogvid.training.precompute import CachedLatents, run_precompute
from cogvid.training.strategies import (
    end_process_group,
    externally_launched,
    resolve_precision,
    start_local_workers,
    strategy_name,
)
from cogvid.utils.errors import CogvidError

log = logging.getLogger("cogvid.train")


def output_dir(cfg) -> Path:
    """train.output_dir, else the Hydra run dir (shared by every rank of one job), else ./outputs/cogvid-train."""
    if cfg.train.output_dir:
        return Path(cfg.train.output_dir).expanduser()
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path("outputs") / "cogvid-train"


def run_train(cfg, deepspeed_strategy_class=None, relaunch: Sequence[str] | None = None):
    """Fit (task=fit: a TrainResult), fill the latent cache (task=precompute: None) or train the VAE (task=vae: a
    `cogvid.training.vae_module.VaeTrainResult`); with train.devices > 1 and no launcher around,
    this process starts the node's other ranks as `relaunch` + the job's overrides and is rank 0.

    `relaunch`: the command that runs this entry point again (cogvid-train passes `python -m` of its own module)."""
    check_values(cfg)  # every option's value, before any data is read or file written
    task = TrainTask(cfg.task)
    if task is TrainTask.vae:  # one process, no DiT
        if cfg.train.get("ema_decay") is not None:
            raise CogvidError("train.ema_decay averages the DiT's weights (task=fit); task=vae keeps no EMA")
        from cogvid.training.vae_module import fit_vae

        return fit_vae(cfg, output_dir(cfg))
    processes = cfg.train.devices if (task is TrainTask.precompute or strategy_name(cfg) != "single") else 1
    if task is TrainTask.fit and externally_launched() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        if not cfg.train.output_dir:
            raise CogvidError(
                "under torchrun or SLURM every rank makes its own Hydra run dir: give them one with "
                "train.output_dir=/shared/path"
            )
    workers = start_local_workers(cfg, processes, output_dir(cfg) if task is TrainTask.fit else None, relaunch)
    ok = False
    try:
        if task is TrainTask.precompute:
            run_precompute(cfg)
            result = None
        else:
            check_fit_inputs(cfg)
            dataset = fit_dataset(cfg)  # read before Lightning is imported, the Trainer's banner and tensorboard/
            from cogvid.training.fit import fit

            result = fit(cfg, dataset, deepspeed_strategy_class)
        ok = True
        return result
    finally:
        if workers is not None:
            workers.finish(ok)
        end_process_group()


def check_fit_inputs(cfg) -> None:
    """train.precision for this device, and the weights task=fit needs: the VAE and T5 when training from videos, and
    a given model.ckpt."""
    resolve_precision(cfg)
    if not cfg.data.cache:
        if not cfg.model.get("vae_ckpt") or not cfg.model.text_encoder.path:
            raise CogvidError(
                "training from videos needs model.vae_ckpt (SAT's vae/3d-vae.pt) and model.text_encoder.path (T5), "
                "or data.cache=<latents from task=precompute>"
            )
        check_vae_file(cfg.model.vae_ckpt)
    if cfg.model.get("ckpt") and not Path(cfg.model.ckpt).expanduser().exists():
        raise CogvidError(f"model.ckpt={cfg.model.ckpt}: no such folder; expected a SAT transformer folder")


def fit_dataset(cfg) -> Dataset:
    """task=fit's training data: the latent cache (data.cache) or the videos, one of which must decode."""
    if cfg.data.cache:
        return CachedLatents(cfg)
    dataset = VideoClips(find_clips(cfg), clip_spec(cfg))
    dataset.check_readable()
    return dataset
