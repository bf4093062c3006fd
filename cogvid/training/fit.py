"""task=fit of cogvid-train: the DiT trained by Lightning (LoRA or SFT), from videos or a latent cache.

Kept apart from `cogvid.training.run` so that precompute and a refused option never import Lightning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L

from cogvid.models.frozen import check_vae_file
from cogvid.training.data import VideoClips, clip_spec, find_clips
from cogvid.training.datamodule import TrainData
from cogvid.training.metrics import TrainMetrics
from cogvid.training.module import PRECISION_DTYPES, VideoDiffusionModule
from cogvid.training.precompute import CachedLatents
from cogvid.training.resume import SAT_DIR, STATE, ResumableCheckpoints, check_resumable, resolve_resume, run_signature
from cogvid.training.run import output_dir
from cogvid.training.strategies import accelerator, build_strategy, resolve_precision, strategy_name
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


def fit(cfg, deepspeed_strategy_class=None) -> TrainResult:
    """task=fit: train the DiT (LoRA or SFT) from videos or a latent cache, resuming when asked."""
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
