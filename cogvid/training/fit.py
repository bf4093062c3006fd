"""task=fit of cogvid-train: the DiT trained by Lightning (LoRA or SFT), from videos or a latent cache.

Kept apart from `cogvid.training.run` so that precompute and a refused option never import Lightning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L

from cogvid.training.datamodule import TrainData
from cogvid.training.metrics import TrainMetrics
from cogvid.training.module import VideoDiffusionModule
from cogvid.training.plan import TrainPlan
from cogvid.training.resume import SAT_DIR, STATE, ResumableCheckpoints
from cogvid.training.strategies import build_strategy
from cogvid.training.trainer import build_trainer
from cogvid.training.validation import ValidationVideos
from cogvid.utils.runtime import PRECISION_DTYPES

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


def _log_start(cfg, plan: TrainPlan, trainer: L.Trainer, module: VideoDiffusionModule) -> None:
    """Log what the run trains, how, and from which step to which (and its EMA, if any)."""
    log.info(
        "training %s (mode=%s, %s, precision %s) on %d process(es) from step %d to %d; output %s",
        cfg.model.name,
        cfg.mode.name,
        plan.strategy,
        plan.precision,
        trainer.world_size,
        plan.start_step,
        cfg.train.max_steps,
        plan.out_dir,
    )
    if module.ema is not None:
        log.info(
            "EMA of the %d trainable weights, decay %s, in every checkpoint; the SAT weights hold the %s weights",
            len(module.trainable_names),
            module.ema.decay,
            "EMA" if plan.sat_from_ema else "trained",
        )


def fit(cfg, plan: TrainPlan, deepspeed_strategy_class=None) -> TrainResult:
    """task=fit: train the DiT (LoRA or SFT) as `plan` (`cogvid.training.plan.plan_train`) says: on its checked
    dataset (videos or a latent cache), resuming from its resume point."""
    t = cfg.train
    out_dir, precision, world_size, signature = plan.out_dir, plan.precision, plan.world_size, plan.signature
    resume_dir, start_step = plan.resume_dir, plan.start_step

    L.seed_everything(t.seed, workers=False, verbose=False)  # the same LoRA init on every rank and every run
    module = VideoDiffusionModule(cfg, precision=precision)
    data = TrainData(plan.dataset, t.batch_size, t.seed, cfg.data.num_workers, t.accumulate_grad_batches)

    sat_dtype = None if precision == "32" else PRECISION_DTYPES[precision]  # SAT stores the training dtype
    checkpoints = ResumableCheckpoints(
        out_dir, t.checkpoint_every, t.keep_last, signature, sat_dtype, sat_from_ema=plan.sat_from_ema
    )
    callbacks = [  # in this order: a step is logged, then checkpointed, then validated
        TrainMetrics(out_dir, t.log_every, t.batch_size * t.accumulate_grad_batches * world_size),
        checkpoints,
        ValidationVideos(cfg, out_dir, plan.image_to_video),
    ]
    trainer = build_trainer(
        cfg,
        out_dir,
        callbacks,
        accelerator=plan.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(plan.strategy, t.process_group_backend, plan.deepspeed, deepspeed_strategy_class),
        precision=precision,
    )
    if trainer.is_global_zero:
        _log_start(cfg, plan, trainer, module)
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
