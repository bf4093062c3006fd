"""Option values checked as soon as a config is composed: before any weights load, any video is read or any file
is written. Each error is one line that names the option (`sampler.guidance_scale=nan must be ...`); options set
without the one they act with are refused or warned about by `cogvid.config.pairings`.

`check_values(cfg)` checks whichever of the sections model (its LoRA settings), infer, sampler, train, data and the
export's `out` the config has; the commands call it first, before torch is even imported, so this module imports
nothing heavy. Checks that need the model or the files (frame counts, weight paths, the data) stay with the code
that knows them, but run before work starts too.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from omegaconf import OmegaConf

from cogvid.config.pairings import check_pairings
from cogvid.config.schema import TrainTask, is_image_to_video
from cogvid.utils.errors import CogvidError

# torch.Generator.manual_seed takes [-2**63, 2**64); video i of a run uses seed + i, so seeds stay in int64's
# non-negative half, and seed + i cannot leave the generator's range for any count of videos.
MAX_SEED = 2**63 - 1


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_seed(option: str, seed) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise CogvidError(f"{option}={seed} must be an integer in [0, 2**63 - 1]")


def check_at_least(option: str, value, minimum: int) -> None:
    if not _number(value) or value < minimum:
        raise CogvidError(f"{option}={value} must be >= {minimum}")


def check_finite(option: str, value, minimum: float | None = None, strict: bool = False) -> None:
    """A finite number, and above `minimum` (strict) or at least it."""
    if not _number(value) or not math.isfinite(value):
        raise CogvidError(f"{option}={value} must be a finite number")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise CogvidError(f"{option}={value} must be {'>' if strict else '>='} {minimum:g}")


def check_folder_path(option: str, path) -> None:
    """A folder to create or write into: neither it nor any folder above it may be an existing file."""
    if path is None or str(path) == "":
        return
    p = Path(str(path)).expanduser()
    for candidate in (p, *p.parents):
        if candidate.exists() or candidate.is_symlink():
            if not candidate.is_dir():
                where = "" if candidate == p else f" ({candidate} is one)"
                raise CogvidError(f"{option}={path} lies under a file, not a folder{where}")
            return


def _check_model(model, mode) -> None:
    check_at_least("model.lora_rank", model.lora_rank, 0)
    check_finite("model.lora_alpha", model.lora_alpha)
    if mode is not None and mode.name == "lora" and model.lora_rank < 1:
        raise CogvidError(f"mode=lora needs model.lora_rank >= 1 (got {model.lora_rank}): the rank of the adapters")


VAE_TILE_WORDS = ("auto", "off")


def check_vae_tile(tile) -> None:
    """infer.vae_tile: auto, off (or null), or [h, w] in latents, both >= 1."""
    if tile is None or (isinstance(tile, str) and tile in VAE_TILE_WORDS):
        return
    if isinstance(tile, str | int | float | bool):
        raise CogvidError(f"infer.vae_tile={tile} must be auto, off or [h, w] in latents")
    tile = list(tile)
    if len(tile) != 2 or not all(_number(t) and t >= 1 for t in tile):
        raise CogvidError(f"infer.vae_tile={tile} must be [h, w] in latents, both >= 1")


def _check_infer(infer) -> None:
    if infer.interactive and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise CogvidError("infer.interactive=true reads one terminal: run it as a single process, not under torchrun")
    if infer.interactive and infer.resume:
        raise CogvidError("infer.resume=true re-runs a prompts file or a prompt: it cannot resume infer.interactive")
    check_seed("infer.seed", infer.seed)
    check_at_least("infer.num_videos_per_prompt", infer.num_videos_per_prompt, 1)
    if infer.fps is not None:
        check_at_least("infer.fps", infer.fps, 1)
    # num_frames, height and width: cogvid.inference.video_shape (it knows the model and names the nearest value)
    check_vae_tile(infer.get("vae_tile"))
    check_finite("infer.strength", infer.strength, 0.0)
    if infer.strength > 1.0:
        raise CogvidError(f"infer.strength={infer.strength} must lie in [0, 1] (1: start from pure noise)")
    if infer.video is not None:
        # Whether the file holds a usable clip is cogvid.inference.source_video's to say (it knows the size).
        if infer.image is not None:
            raise CogvidError(
                "infer.video and infer.image exclude each other: video to video takes a text-to-video model, no image"
            )
        video = Path(str(infer.video)).expanduser()
        if not video.is_file():
            raise CogvidError(f"infer.video={infer.video}: no such file")
        if not os.access(video, os.R_OK):
            raise CogvidError(f"infer.video={infer.video}: the file cannot be read (permissions)")
    check_folder_path("infer.output_dir", infer.output_dir)


def _check_sampler(sampler) -> None:
    check_at_least("sampler.num_steps", sampler.num_steps, 1)
    check_finite("sampler.guidance_scale", sampler.guidance_scale)
    check_finite("sampler.dynamic_exp", sampler.dynamic_exp)
    check_at_least("sampler.dynamic_num_steps", sampler.dynamic_num_steps, 1)
    if sampler.get("cache") is not None:
        check_finite("sampler.cache", sampler.cache, 0.0)
    if sampler.cache_order not in (0, 1, 2):
        raise CogvidError(f"sampler.cache_order={sampler.cache_order} must be 0, 1 or 2")
    check_at_least("sampler.cache_warmup", sampler.cache_warmup, 0)
    if sampler.get("cache_max_run") is not None:
        check_at_least("sampler.cache_max_run", sampler.cache_max_run, 0)


def _check_train(train) -> None:
    check_seed("train.seed", train.seed)
    if train.lr is not None:
        check_finite("train.lr", train.lr, 0.0, strict=True)
    check_finite("train.eps", train.eps, 0.0, strict=True)
    check_finite("train.weight_decay", train.weight_decay, 0.0)
    check_finite("train.gradient_clip", train.gradient_clip, 0.0)
    ema_decay = train.get("ema_decay")
    if ema_decay is not None:
        if not _number(ema_decay) or not 0.0 < ema_decay < 1.0:
            raise CogvidError(f"train.ema_decay={ema_decay} must lie in (0, 1), e.g. 0.999 (null: no EMA)")
    betas = list(train.betas)
    if len(betas) != 2 or not all(_number(b) and 0.0 <= b < 1.0 for b in betas):
        raise CogvidError(f"train.betas={betas} must be two numbers in [0, 1)")
    if train.warmup_steps is not None:
        check_at_least("train.warmup_steps", train.warmup_steps, 0)
    for name in ("checkpoint_every", "log_every"):
        check_at_least(f"train.{name}", train.get(name), 0)
    for name in ("max_steps", "batch_size", "accumulate_grad_batches", "devices", "num_nodes", "keep_last"):
        check_at_least(f"train.{name}", train.get(name), 1)  # keep_last: the latest checkpoint is always kept
    check_finite("train.ucg_rate", train.ucg_rate, 0.0)
    if train.ucg_rate > 1.0:
        raise CogvidError(f"train.ucg_rate={train.ucg_rate} must lie in [0, 1]")
    vae = train.get("vae")
    if vae is not None:  # task=vae's settings
        check_at_least("train.vae.holdout", vae.holdout, 1)  # the PSNR is measured on held-out clips
        for name in ("kl_weight", "foreground_weight", "edge_weight"):
            check_finite(f"train.vae.{name}", vae.get(name), 0.0)
    for i, seed in enumerate(train.validation.seeds):
        check_seed(f"train.validation.seeds[{i}]", seed)
    check_folder_path("train.output_dir", train.output_dir)


def _check_data(data) -> None:
    check_at_least("data.num_workers", data.num_workers, 0)
    check_at_least("data.fps", data.fps, 1)
    check_folder_path("data.cache", data.cache)


def _check_parallel(cfg) -> None:
    sequence, guidance = cfg.parallel.sequence, cfg.parallel.cfg
    check_at_least("parallel.sequence", sequence, 1)
    if guidance not in (1, 2):
        raise CogvidError(f"parallel.cfg={guidance} must be 1 or 2 (the two passes of classifier-free guidance)")
    world, per_video = int(os.environ.get("WORLD_SIZE", 1)), sequence * guidance
    if per_video > 1 and world % per_video:
        launch = f"{world} processes" if world > 1 else "one process (no torchrun)"
        options = f"parallel.sequence={sequence}" + (f" x parallel.cfg={guidance}" if guidance > 1 else "")
        raise CogvidError(
            f"{options} makes each video on {per_video} processes, but the run has {launch}: "
            f"start it with torchrun --nproc_per_node {per_video} (or a multiple)"
        )
    ring = cfg.parallel.ring
    check_at_least("parallel.ring", ring, 1)
    if sequence % ring:
        raise CogvidError(f"parallel.ring={ring} must divide parallel.sequence={sequence} (ring x Ulysses processes)")
    heads, ulysses = cfg.model.num_attention_heads, sequence // ring
    if heads % ulysses:  # Ulysses: each rank of a ring position attends with heads / ulysses of them
        raise CogvidError(
            f"parallel.sequence={sequence} over parallel.ring={ring} leaves {ulysses} Ulysses processes, which must "
            f"divide {cfg.model.name}'s {heads} attention heads: make the ring larger or pick a divisor of {heads}"
        )
    if sequence > 1 and cfg.sampler.get("cache") is not None:
        raise CogvidError(
            f"sampler.cache={cfg.sampler.cache} does not run with parallel.sequence={sequence}: leave one of them unset"
        )


def check_vae_file(path) -> None:
    """One line unless `model.vae_ckpt` names an existing file; nothing is loaded (callers check it before work)."""
    if not Path(str(path)).expanduser().is_file():
        raise CogvidError(
            f"model.vae_ckpt={path}: no such file; expected SAT's vae/3d-vae.pt "
            "(release layout: <variant>-sat/vae/3d-vae.pt)"
        )


def check_train_weights(cfg) -> None:
    """The weights a `cogvid-train` task loads, set (and the VAE and model.ckpt on disk): task=precompute and fit from
    videos encode with the VAE and T5, validation videos sample with them, fit starts from model.ckpt when set."""
    task, model = TrainTask(cfg.task), cfg.model
    if task is TrainTask.precompute:
        if not cfg.data.cache:
            raise CogvidError("task=precompute needs data.cache=<folder> to write the latents into")
        if not model.vae_ckpt:
            raise CogvidError("task=precompute needs model.vae_ckpt (SAT's vae/3d-vae.pt)")
        if not model.text_encoder.path:
            raise CogvidError("task=precompute needs model.text_encoder.path (the T5 folder)")
        check_vae_file(model.vae_ckpt)  # before a video is decoded
        return
    if task is not TrainTask.fit:
        return
    if not cfg.data.cache:
        if not model.get("vae_ckpt") or not model.text_encoder.path:
            raise CogvidError(
                "training from videos needs model.vae_ckpt (SAT's vae/3d-vae.pt) and model.text_encoder.path (T5), "
                "or data.cache=<latents from task=precompute>"
            )
        check_vae_file(model.vae_ckpt)
    if model.get("ckpt") and not Path(model.ckpt).expanduser().exists():
        raise CogvidError(f"model.ckpt={model.ckpt}: no such folder; expected a SAT transformer folder")
    if cfg.train.validation.every > 0 and not (model.vae_ckpt and model.text_encoder.path):
        raise CogvidError("validation videos need model.vae_ckpt and model.text_encoder.path (also with data.cache)")


def check_values(cfg) -> None:
    """Refuse out-of-range option values in every section `cfg` has (see the module doc)."""
    if "model" in cfg and not OmegaConf.is_missing(cfg, "model") and cfg.model is not None:
        _check_model(cfg.model, cfg.get("mode"))
    sections = {"infer": _check_infer, "sampler": _check_sampler, "train": _check_train, "data": _check_data}
    for name, check in sections.items():
        if name in cfg and cfg.get(name) is not None:
            check(cfg.get(name))
    if cfg.get("parallel") is not None:
        _check_parallel(cfg)
    if cfg.get("memory_limit_gb") is not None:
        check_finite("memory_limit_gb", cfg.memory_limit_gb, 0.0, strict=True)
    if "out" in cfg and isinstance(cfg.get("out"), str):
        check_folder_path("out", cfg.get("out"))
    if "infer" in cfg and cfg.infer.video is not None and is_image_to_video(cfg.model):
        raise CogvidError(
            f"infer.video={cfg.infer.video}: {cfg.model.name} is image-to-video; video to video takes a text-to-video "
            "model (model=2b, 5b, 1.5_5b or shapes)"
        )
    check_pairings(cfg)  # options that act only with another one (cogvid.config.pairings)
