"""The Lightning Trainer both training tasks run under (task=fit for the DiT, task=vae for the VAE).

cogvid does its own checkpointing, validation and distributed sampling, so Lightning's are off; `train.*` gives the
step budget, accumulation, clipping, progress bar and logging interval, and `train.callbacks` adds the user's.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L


def user_callbacks(cfg) -> list:
    """`train.callbacks`: extra Lightning callbacks as Hydra nodes with `_target_`."""
    if not cfg.train.callbacks:
        return []
    from hydra.utils import instantiate

    return [instantiate(node) for node in cfg.train.callbacks]


def build_trainer(cfg, out_dir: Path, callbacks: list, **placement) -> L.Trainer:
    """A Trainer writing TensorBoard logs to `out_dir/tensorboard`, with `callbacks` then the user's.

    `placement`: accelerator, devices, num_nodes, strategy and precision, which differ between the tasks."""
    from lightning.pytorch.loggers import TensorBoardLogger

    t = cfg.train
    return L.Trainer(
        **placement,
        max_steps=t.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip or None,
        logger=TensorBoardLogger(str(out_dir), name="tensorboard", version=""),
        callbacks=[*callbacks, *user_callbacks(cfg)],
        enable_checkpointing=False,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=max(1, t.log_every),
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        default_root_dir=str(out_dir),
    )
