"""`run_train(cfg)`: the testable core of cogvid-train (fit, or precompute the latent cache)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L

from cogvid.config.checks import check_values
from cogvid.config.schema import TrainTask
from cogvid.models.frozen import check_vae_file
from cogvid.training.data import TrainData, VideoClips, clip_spec, find_clips
from cogvid.training.metrics import TrainMetrics
from cogvid.training.module import PRECISION_DTYPES, VideoDiffusionModule
from cogvid.training.precompute import CachedLatents, run_precompute
from cogvid.training.resume import (
    SAT_DIR,
    STATE,
    ResumableCheckpoints,
    check_resumable,
    resolve_resume,
    run_signature,
)
from cogvid.training.strategies import (
    accelerator,
    build_strategy,
    end_process_group,
    externally_launched,
    resolve_precision,
    start_local_workers,
    strategy_name,
)
from cogvid.training.trainer import build_trainer
from cogvid.training.validation import ValidationVideos
from cogvid.utils.errors import CogvidError

log = logging.getLogger("cogvid.train")


@dataclass
class TrainResult:
    output_dir: Path
    sat_dir: Path  # SAT-layout weights: `cogvid-sample model.ckpt=<sat_dir>`
    start_step: int
    final_step: int
    checkpoints: list[int] = field(default_factory=list)  # steps saved by this run
    module: VideoDiffusionModule | None = None
    trainer: L.Trainer | None = None


def output_dir(cfg) -> Path:
    """train.output_dir, else the Hydra run dir (shared by every rank of one job), else ./outputs/cogvid-train."""
    if cfg.train.output_dir:
        return Path(cfg.train.output_dir).expanduser()
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path("outputs") / "cogvid-train"


def check_train_config(cfg) -> None:
    t = cfg.train
    for name in ("max_steps", "batch_size", "accumulate_grad_batches", "devices", "num_nodes"):
        if getattr(t, name) < 1:
            raise CogvidError(f"train.{name}={getattr(t, name)} must be >= 1")
    if not 0.0 <= t.ucg_rate <= 1.0:
        raise CogvidError(f"train.ucg_rate={t.ucg_rate} must lie in [0, 1]")
    if t.keep_last < 1:
        raise CogvidError(f"train.keep_last={t.keep_last} must be >= 1 (the latest checkpoint is always kept)")
    if cfg.mode.name == "lora" and cfg.model.lora_rank <= 0:
        raise CogvidError("mode=lora needs model.lora_rank > 0")
    if not cfg.data.cache:
        missing = [k for k in ("vae_ckpt",) if not cfg.model.get(k)]
        if missing or not cfg.model.text_encoder.path:
            raise CogvidError(
                "training from videos needs model.vae_ckpt (SAT's vae/3d-vae.pt) and model.text_encoder.path (T5), "
                "or data.cache=<latents from task=precompute>"
            )
        check_vae_file(cfg.model.vae_ckpt)
    if cfg.model.get("ckpt") and not Path(cfg.model.ckpt).expanduser().exists():
        raise CogvidError(f"model.ckpt={cfg.model.ckpt}: no such folder; expected a SAT transformer folder")


def run_train(cfg, deepspeed_strategy_class=None, relaunch: Sequence[str] | None = None):
    """Fit (task=fit: a TrainResult), fill the latent cache (task=precompute: None) or train the VAE (task=vae: a
    `cogvid.training.vae_module.VaeTrainResult`); with train.devices > 1 and no launcher around,
    this process starts the node's other ranks as `relaunch` + the job's overrides and is rank 0.

    `relaunch`: the command that runs this entry point again (cogvid-train passes `python -m` of its own module)."""
    check_values(cfg)  # every option's value, before any data is read or file written
    task = TrainTask(cfg.task)
    if task is TrainTask.vae:  # one process, no DiT
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
            result = _fit(cfg, deepspeed_strategy_class)
        ok = True
        return result
    finally:
        if workers is not None:
            workers.finish(ok)
        end_process_group()


def _fit(cfg, deepspeed_strategy_class=None) -> TrainResult:
    check_train_config(cfg)
    t = cfg.train
    out_dir = output_dir(cfg)
    precision = resolve_precision(cfg)
    world_size = t.devices * t.num_nodes if strategy_name(cfg) != "single" else 1
    signature = run_signature(cfg, world_size)
    resume_dir = resolve_resume(t.resume, out_dir)
    start_step = check_resumable(resume_dir, signature) if resume_dir is not None else 0

    if cfg.data.cache:
        dataset = CachedLatents(cfg)
    else:
        dataset = VideoClips(find_clips(cfg), clip_spec(cfg))
        dataset.check_readable()  # before the Trainer prints its banner or writes tensorboard/ and hparams.yaml
    L.seed_everything(t.seed, workers=False, verbose=False)  # the same LoRA init on every rank and every run
    module = VideoDiffusionModule(cfg, precision=precision)
    data = TrainData(dataset, t.batch_size, t.seed, cfg.data.num_workers, t.accumulate_grad_batches)

    sat_dtype = None if precision == "32" else PRECISION_DTYPES[precision]  # SAT stores the training dtype
    checkpoints = ResumableCheckpoints(out_dir, t.checkpoint_every, t.keep_last, signature, sat_dtype)
    callbacks = [  # in this order: a step is logged, then checkpointed, then validated
        TrainMetrics(out_dir, t.log_every, t.batch_size * t.accumulate_grad_batches * world_size),
        checkpoints,
        ValidationVideos(cfg, out_dir),
    ]
    trainer = build_trainer(
        cfg,
        out_dir,
        callbacks,
        accelerator=accelerator(cfg),
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(cfg, deepspeed_strategy_class),
        precision=precision,
    )
    if trainer.is_global_zero:
        log.info(
            "training %s (mode=%s, %s, precision %s) on %d process(es) from step %d to %d; output %s",
            cfg.model.name,
            cfg.mode.name,
            strategy_name(cfg),
            precision,
            trainer.world_size,
            start_step,
            t.max_steps,
            out_dir,
        )
    ckpt_path = str(resume_dir / STATE) if resume_dir is not None else None
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    return TrainResult(
        output_dir=out_dir,
        sat_dir=out_dir / SAT_DIR,
        start_step=start_step,
        final_step=trainer.global_step,
        checkpoints=list(checkpoints.saved),
        module=module,
        trainer=trainer,
    )
