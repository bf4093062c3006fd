"""`run_sample(cfg)`: prompts (and images, or a source clip) to MP4 videos and their JSON sidecars, the work of
cogvid-sample.

Everything that can be checked without the models is checked first (prompts, images, frame count and size, the
source clip of video to video, the weight paths, then the output dir, so a bad path writes nothing), so a bad input
costs a second, not a model load.
`VideoPipeline.from_config` checks the weight paths again for callers that use it directly (a few `stat` calls).
Under torchrun the prompts are sharded across ranks (`cogvid.inference.prompts.shard`)
and all ranks write into rank 0's output dir.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cogvid.config.checks import check_values
from cogvid.config.schema import Uncond, is_image_to_video
from cogvid.inference import memory
from cogvid.inference.outputs import check_writable, config_hash, next_free_index, video_stem, write_sample
from cogvid.inference.pipeline import VideoPipeline, check_weight_paths, load_pipeline, loaded_pipeline
from cogvid.inference.prompts import PromptJob, prompt_jobs, shard
from cogvid.inference.source_video import read_source_video
from cogvid.inference.video_shape import job_video_shape, video_shape
from cogvid.utils.errors import CogvidError
from cogvid.utils.media import read_image, to_uint8_frames
from cogvid.utils.runtime import dist_env, dtype_name, resolve_device_dtype, torch_dtype

log = logging.getLogger("cogvid.sample")


def _hydra_config():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def output_dir(cfg, world_size: int) -> Path:
    """infer.output_dir (plus the job number in a sweep), else the Hydra run dir; under torchrun, rank 0's."""
    from hydra.types import RunMode

    hc = _hydra_config()
    sweeping = hc is not None and hc.mode == RunMode.MULTIRUN
    if cfg.infer.output_dir:
        base = Path(cfg.infer.output_dir).expanduser()
        return base / str(hc.job.num) if sweeping else base
    local = Path(hc.runtime.output_dir) if hc is not None else Path("outputs")
    if world_size == 1:
        return local
    import torch.distributed as dist

    # All ranks write where rank 0's Hydra run dir is (their own run-dir timestamps may differ by a second).
    shared = [str(local)]
    dist.broadcast_object_list(shared, src=0)
    return Path(shared[0])


def _image_for(job: PromptJob, cfg):
    """The PIL image of an I2V job (checked now), or None for text-to-video; one line when it does not fit."""
    path = job.image or cfg.infer.image
    if is_image_to_video(cfg.model):
        if path is None:
            raise CogvidError(
                f"{job.source}: {cfg.model.name} is image-to-video; give infer.image=PATH or a prompt@@image line"
            )
        return read_image(path)
    if path is not None:
        raise CogvidError(
            f"{job.source}: {cfg.model.name} is text-to-video, so it takes no image (the image-to-video variants "
            "are model=5b_i2v and model=1.5_5b_i2v)"
        )
    return None


def _sidecar(cfg, job: PromptJob, index: int, rank: int, result, fps: int, pipeline: VideoPipeline) -> dict:
    from cogvid.config.pairings import ignored_options

    hc = _hydra_config()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return {
        "prompt": job.prompt,
        "negative_prompt": cfg.infer.negative_prompt if Uncond(cfg.sampler.uncond) is Uncond.negative_prompt else None,
        "uncond": Uncond(cfg.sampler.uncond).value,
        "image": job.image or cfg.infer.image,
        "video": cfg.infer.video,  # video to video: the source clip, re-noised to `strength`
        "strength": cfg.infer.strength if cfg.infer.video is not None else None,
        "ignored": ignored_options(cfg),  # set options that act only with another one, which is off here
        "index": index,
        "rank": rank,
        "seed": result.seed,
        "num_frames": int(result.video.shape[1]),
        "height": int(result.video.shape[2]),
        "width": int(result.video.shape[3]),
        "fps": fps,
        "model": cfg.model.name,
        "sampler": resolved["sampler"],
        "steps": cfg.sampler.num_steps,
        "guidance_scale": cfg.sampler.guidance_scale,
        "dtype": dtype_name(pipeline.dtype),
        "vae_dtype": dtype_name(pipeline.vae_dtype),
        "device": str(pipeline.device),
        "config_hash": config_hash(resolved),
        "overrides": list(hc.overrides.task) if hc is not None else [],
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
    }


def check_memory(cfg, device, shapes) -> None:
    """Refuse, before anything loads, a run whose largest video would not fit (`cogvid.inference.memory`)."""
    device, dtype = (device, resolve_device_dtype(cfg)[1]) if device is not None else resolve_device_dtype(cfg)
    vae_dtype = torch_dtype(cfg.vae_dtype) or dtype
    largest = max(shapes, key=lambda s: s.num_frames * s.height * s.width)
    held = loaded_pipeline(cfg, device)
    held_bytes = memory.loaded_bytes(held.model.backbone, held.vae) if held is not None else 0
    estimate, budget = memory.check_fits(cfg, largest, device, dtype, vae_dtype, held=held_bytes)
    log.info("memory: about %s at most (%s available)", memory.gb(estimate.peak), memory.gb(budget))


def run_texts(cfg, jobs) -> list[str]:
    """Every text the run encodes: the prompts, and the negative prompt when the unconditional pass uses it."""
    texts = [job.prompt for job in jobs]
    if Uncond(cfg.sampler.uncond) is Uncond.negative_prompt:
        texts.append(cfg.infer.negative_prompt or "")
    return texts


def run_sample(cfg, stdin=None) -> list[Path]:
    """Sample every prompt of a composed `sample` config; returns the files written by this rank.

    `stdin`: where infer.interactive=true reads prompts (default sys.stdin)."""
    rank, world, local_rank = dist_env()
    check_values(cfg)  # every option's value, before any weights load or file is written
    if cfg.infer.interactive and world > 1:
        raise CogvidError("infer.interactive=true reads one terminal: run it as a single process, not under torchrun")
    source_video = None
    if cfg.infer.video is not None:  # read and cut now: a bad clip costs no model load
        shape = video_shape(cfg.model, cfg.infer.num_frames, cfg.infer.height, cfg.infer.width)
        source_video = read_source_video(cfg, shape)
    jobs = prompt_jobs(cfg.infer, stdin)
    if not cfg.infer.interactive:  # check every prompt and image before any model is loaded
        jobs = list(jobs)
        images = {job.index: _image_for(job, cfg) for job in jobs}
        shapes = [
            job_video_shape(cfg.model, cfg.infer, None if (im := images[job.index]) is None else (im.height, im.width))
            for job in jobs
        ]
    check_weight_paths(cfg)  # before the output dir exists: a bad path writes nothing
    device = None
    if world > 1 and torch.cuda.is_available() and cfg.device in ("auto", "cuda"):
        device = torch.device("cuda", local_rank)
    if not cfg.infer.interactive:  # also before the output dir: a run that cannot fit writes nothing
        check_memory(cfg, device, shapes)

    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
    samples_dir = check_writable(output_dir(cfg, world))
    first_index = next_free_index(samples_dir)  # after any earlier run's videos: nothing is overwritten
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank has read the dir before any rank writes into it

    texts = None if cfg.infer.interactive else run_texts(cfg, list(shard(jobs, rank, world)))
    # T5 encodes every text first and is freed before the DiT and VAE load; a sweep's later jobs reuse the weights
    pipeline = load_pipeline(cfg, device=device, prompts=texts)
    fps = cfg.infer.fps or cfg.model.default_fps
    n = cfg.infer.num_videos_per_prompt
    source = None
    if source_video is not None:  # one clip for every prompt and video: encoded once
        start = time.perf_counter()
        source = pipeline.encode_video(source_video)
        log.info("encoded %s in %.2f s (strength %g)", cfg.infer.video, time.perf_counter() - start, cfg.infer.strength)
    written: list[Path] = []
    for job in shard(jobs, rank, world):
        image = images[job.index] if not cfg.infer.interactive else _image_for(job, cfg)
        shape = pipeline.shape_for(None if image is None else (image.height, image.width))
        for k in range(n):
            index = job.index * n + k
            result = pipeline.generate(
                job.prompt,
                seed=cfg.infer.seed + index,
                negative_prompt=cfg.infer.negative_prompt,
                image=image,
                shape=shape,
                progress=rank == 0,
                source=source,
                strength=cfg.infer.strength,
            )
            sidecar = _sidecar(cfg, job, index, rank, result, fps, pipeline)
            latents = result.latents if cfg.infer.save_latents else None
            caption = job.prompt if cfg.infer.frame_strip else None
            stem = video_stem(first_index + index, job.prompt)
            files = write_sample(samples_dir, stem, to_uint8_frames(result.video), fps, sidecar, latents, caption)
            t = result.timings
            log.info(
                "wrote %s: text %.2f s, sampling %.2f s, decoding %.2f s, peak memory %.2f GB "
                "(%d frames %dx%d, seed %d)",
                " and ".join(str(f) for f in files if f.suffix in (".mp4", ".png")),
                t["text_s"],
                t["sampling_s"],
                t["decoding_s"],
                t["peak_memory_gb"],
                result.shape.num_frames,
                result.shape.height,
                result.shape.width,
                result.seed,
            )
            written.extend(files)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return written
