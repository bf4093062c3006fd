"""Plan, then fit: `plan_train(cfg)` turns a composed `train` config into one frozen `TrainPlan`, checked once before
any model loads or file is written; `cogvid.training.run.run_train` then runs it and decides nothing.

The checks go from the cheapest on: the option values and the weights the task needs (`cogvid.config.checks`, before
torch is even imported), the processes and strategy, the data (one clip must decode, a latent cache must fit the
model), then the resume point. Each task plans its own part: task=fit (`_plan_fit`), task=vae (`_plan_vae`),
task=precompute (`_plan_precompute`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cogvid.config.checks import check_train_weights, check_values
from cogvid.config.schema import TrainTask, is_image_to_video
from cogvid.utils.errors import CogvidError

if TYPE_CHECKING:
    from cogvid.training.data import Clip, ClipSpec


@dataclass(frozen=True)
class TrainPlan:
    """Every decision of one cogvid-train job."""

    task: TrainTask
    out_dir: Path | None  # fit, vae: the run's folder (precompute writes into `cache`)
    processes: int  # this node's processes; run_train starts ranks 1.. when no launcher did
    image_to_video: bool = False  # fit, precompute: an I2V model (its cache holds image latents, validation images)
    spec: ClipSpec | None = None  # how a video becomes a clip (None: fit from data.cache)
    clips: tuple[Clip, ...] = ()  # precompute: the clips to encode; vae: those to train on (one decodes)
    holdout: tuple[Clip, ...] = ()  # vae: the held-out clips its PSNR is measured on
    cache: Path | None = None  # data.cache: fit reads it, precompute writes it
    cache_meta: dict | None = None  # precompute: data.cache/meta.json (an existing one agrees with it)
    dataset: Any = None  # fit: the training data, videos (`VideoClips`) or the cache (`CachedLatents`), checked
    accelerator: str = "cpu"  # Lightning's accelerator, gpu | cpu (precompute: where it encodes)
    precision: str = "32"  # Lightning's precision, bf16-mixed | 16-mixed | 32
    frozen_dtype: Any = None  # precompute: the torch dtype the VAE and T5 encode in (`strategies.frozen_dtype`)
    strategy: str = "single"  # train.strategy: single | ddp | deepspeed
    deepspeed: dict | None = None  # the DeepSpeed JSON config (strategy deepspeed)
    world_size: int = 1  # fit: the processes of the whole run
    sat_from_ema: bool = False  # fit: the SAT weights of a checkpoint hold the EMA (train.sat_weights=ema)
    signature: dict | None = None  # fit: what a resumed run must share with this one
    resume_dir: Path | None = None  # fit: the checkpoint folder to continue from
    start_step: int = 0


def plan_train(cfg, run_dir: Path | None = None) -> TrainPlan:
    """The checked plan of a composed `train` config (see the module doc). `run_dir`: the Hydra run dir the job will
    write to, when it is planned before Hydra made it (None: Hydra's own, else ./outputs/cogvid-train)."""
    check_values(cfg)  # first: a refused option value costs no torch import (the planners below import it)
    check_train_weights(cfg)  # the weights the task loads, set and on disk
    image_to_video = is_image_to_video(cfg.model)
    task = TrainTask(cfg.task)
    if task is TrainTask.precompute:
        return _plan_precompute(cfg, image_to_video)
    out_dir = output_dir(cfg, run_dir)
    return _plan_vae(cfg, out_dir) if task is TrainTask.vae else _plan_fit(cfg, out_dir, image_to_video)


def output_dir(cfg, run_dir: Path | None = None) -> Path:
    """train.output_dir, else the Hydra run dir (shared by every rank of one job), else ./outputs/cogvid-train."""
    if cfg.train.output_dir:
        return Path(cfg.train.output_dir).expanduser()
    if run_dir is not None:
        return Path(run_dir)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path("outputs") / "cogvid-train"


def _plan_fit(cfg, out_dir: Path, image_to_video: bool) -> TrainPlan:
    """task=fit: processes and strategy, the validation videos, the data, then the resume point."""
    from cogvid.training.strategies import deepspeed_config, device_placement, externally_launched, strategy_name

    t = cfg.train
    strategy = strategy_name(cfg)
    if strategy == "single" and (t.devices != 1 or t.num_nodes != 1):
        raise CogvidError("train=single runs one process: use train=ddp or a deepspeed strategy for more devices")
    if strategy == "deepspeed" and t.get("ema_decay") is not None:
        raise CogvidError(
            "train.ema_decay is not supported under DeepSpeed yet (each rank would have to average its own ZeRO "
            "partition): use train=single or train=ddp, or leave train.ema_decay unset"
        )
    if externally_launched() and int(os.environ.get("WORLD_SIZE", 1)) > 1 and not t.output_dir:
        raise CogvidError(
            "under torchrun or SLURM every rank makes its own Hydra run dir: give them one with "
            "train.output_dir=/shared/path"
        )
    accelerator, precision = device_placement(cfg)
    deepspeed = deepspeed_config(cfg, precision) if strategy == "deepspeed" else None
    _check_validation(cfg, image_to_video)
    spec, dataset = _fit_dataset(cfg, image_to_video)  # read before Lightning is imported (resume.py imports it)
    from cogvid.training.resume import check_resumable, resolve_resume, run_signature

    world_size = t.devices * t.num_nodes if strategy != "single" else 1
    signature = run_signature(cfg, strategy, world_size)
    resume_dir = resolve_resume(t.resume, out_dir)
    return TrainPlan(
        task=TrainTask.fit,
        out_dir=out_dir,
        processes=t.devices if strategy != "single" else 1,
        image_to_video=image_to_video,
        spec=spec,
        cache=Path(cfg.data.cache).expanduser() if cfg.data.cache else None,
        dataset=dataset,
        accelerator=accelerator,
        precision=precision,
        strategy=strategy,
        deepspeed=deepspeed,
        world_size=world_size,
        sat_from_ema=str(getattr(t.sat_weights, "value", t.sat_weights)) == "ema",
        signature=signature,
        resume_dir=resume_dir,
        start_step=check_resumable(resume_dir, signature) if resume_dir is not None else 0,
    )


def _check_validation(cfg, image_to_video: bool) -> None:
    """train.validation: prompts (and, for an I2V model, one image each)."""
    v = cfg.train.validation
    if v.every <= 0:
        return
    if not v.prompts:
        raise CogvidError("train.validation.every > 0 needs train.validation.prompts='[a prompt, ...]'")
    if image_to_video and len(v.images) != len(v.prompts):
        raise CogvidError(
            f"{cfg.model.name} is image-to-video: give one train.validation.images entry per prompt "
            f"({len(v.prompts)} prompts, {len(v.images)} images)"
        )


def _fit_dataset(cfg, image_to_video: bool) -> tuple[ClipSpec | None, Any]:
    """task=fit's training data: the latent cache (data.cache, checked against the model) or the videos, one of
    which must decode."""
    from cogvid.training.data import VideoClips, clip_spec, find_clips
    from cogvid.training.precompute import CachedLatents

    if cfg.data.cache:
        return None, CachedLatents(cfg, image_to_video)
    spec = clip_spec(cfg)
    dataset = VideoClips(find_clips(cfg), spec)
    dataset.check_readable()
    return spec, dataset


def _plan_vae(cfg, out_dir: Path) -> TrainPlan:
    """task=vae: one process on videos, never resumed; the held-out clips and one training clip that decodes."""
    from cogvid.training.data import VideoClips, clip_spec, find_clips
    from cogvid.training.strategies import device_placement, strategy_name
    from cogvid.training.vae_module import holdout_indices

    t, v = cfg.train, cfg.train.vae
    if strategy_name(cfg) != "single" or t.devices != 1 or t.num_nodes != 1:
        raise CogvidError("task=vae trains in one process: use train=single train.devices=1 train.num_nodes=1")
    if cfg.data.cache:
        raise CogvidError("task=vae trains on videos (data.root or data.manifest), not on data.cache latents")
    if v.init and not Path(v.init).expanduser().is_file():
        raise CogvidError(f"train.vae.init={v.init}: no such file (a 3d-vae.pt, e.g. OUT/vae/3d-vae.pt)")
    if v.freeze_encoder and not v.init:
        raise CogvidError(
            "train.vae.freeze_encoder=true keeps a trained encoder: name it with train.vae.init=3d-vae.pt"
        )
    accelerator, precision = device_placement(cfg)
    spec, clips = clip_spec(cfg), find_clips(cfg)
    if len(clips) <= v.holdout:
        raise CogvidError(
            f"{len(clips)} clips, train.vae.holdout={v.holdout}: hold out fewer, so that some are left to train on"
        )
    held = set(holdout_indices(len(clips), v.holdout))
    train_clips = tuple(c for i, c in enumerate(clips) if i not in held)
    VideoClips(list(train_clips), spec).check_readable()  # before the Trainer starts
    return TrainPlan(
        task=TrainTask.vae,
        out_dir=out_dir,
        processes=1,
        spec=spec,
        clips=train_clips,
        holdout=tuple(clips[i] for i in sorted(held)),
        accelerator=accelerator,
        precision=precision,
    )


def _plan_precompute(cfg, image_to_video: bool) -> TrainPlan:
    """task=precompute: the clips (one decodes) and a data.cache that takes these latents."""
    from cogvid.training.data import VideoClips, clip_spec, find_clips
    from cogvid.training.precompute import cache_meta, check_cache_agrees
    from cogvid.training.strategies import device_placement, frozen_dtype

    accelerator, precision = device_placement(cfg)  # the frozen parts run as a fit of this config would run them
    spec = clip_spec(cfg)
    videos = VideoClips(find_clips(cfg), spec)
    videos.check_readable()  # one clip decodes to enough frames, before meta.json is written
    cache = Path(cfg.data.cache).expanduser()
    meta = cache_meta(cfg, spec, image_to_video)
    check_cache_agrees(cache, meta)
    return TrainPlan(
        task=TrainTask.precompute,
        out_dir=None,
        processes=cfg.train.devices,
        image_to_video=image_to_video,
        spec=spec,
        clips=tuple(videos.clips),
        cache=cache,
        cache_meta=meta,
        accelerator=accelerator,
        precision=precision,
        frozen_dtype=frozen_dtype(cfg, precision),
    )
