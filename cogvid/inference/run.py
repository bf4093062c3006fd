"""`run_sample(cfg)`: prompts (and images, or a source clip) to MP4 videos and their JSON sidecars, the work of
cogvid-sample, in two calls: `plan_sample` (`cogvid.inference.plan`: every check, once, before anything loads) and
`execute`, which loads the planned weights and makes the planned videos, deciding nothing.

Under torchrun the prompts are sharded across ranks (`cogvid.inference.prompts.shard`) and all ranks write into rank
0's output dir. A single run is planned before Hydra makes its run dir (`cogvid.cli.hydra_app`), so a refused run
writes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from omegaconf import OmegaConf

from cogvid.config.schema import Uncond
from cogvid.inference.outputs import config_hash, write_sample
from cogvid.inference.plan import PlannedVideo, SamplePlan, plan_sample, plan_videos
from cogvid.inference.prompts import prompt_jobs
from cogvid.utils.media import to_uint8_frames
from cogvid.utils.runtime import dist_env, dtype_name

log = logging.getLogger("cogvid.sample")


def _sidecar(cfg, plan: SamplePlan, video: PlannedVideo, result, pipeline) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from cogvid.config.pairings import ignored_options

    hc = HydraConfig.get() if HydraConfig.initialized() else None
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return {
        "prompt": video.prompt,
        "negative_prompt": cfg.infer.negative_prompt if Uncond(cfg.sampler.uncond) is Uncond.negative_prompt else None,
        "uncond": Uncond(cfg.sampler.uncond).value,
        "image": video.image_path,
        "video": cfg.infer.video,  # video to video: the source clip, re-noised to `strength`
        "strength": cfg.infer.strength if cfg.infer.video is not None else None,
        "ignored": ignored_options(cfg),  # set options that act only with another one, which is off here
        "index": video.index,
        "rank": plan.rank,
        "seed": result.seed,
        "num_frames": int(result.video.shape[1]),
        "height": int(result.video.shape[2]),
        "width": int(result.video.shape[3]),
        "fps": plan.fps,
        "model": cfg.model.name,
        "sampler": resolved["sampler"],
        "steps": cfg.sampler.num_steps,
        "guidance_scale": cfg.sampler.guidance_scale,
        "dtype": dtype_name(pipeline.dtype),
        "vae_dtype": dtype_name(pipeline.vae_dtype),
        "device": str(pipeline.device),
        "config_hash": config_hash(resolved),
        "settings_hash": plan.settings_hash,  # what infer.resume compares (cogvid.inference.plan.settings_hash)
        "overrides": list(hc.overrides.task) if hc is not None else [],
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
    }


def _write(cfg, plan: SamplePlan, pipeline, video: PlannedVideo, source) -> list[Path]:
    """Make one planned video and write its files."""
    result = pipeline.generate(
        video.prompt,
        seed=video.seed,
        negative_prompt=cfg.infer.negative_prompt,
        image=video.image,
        shape=video.shape,
        progress=plan.rank == 0,
        source=source,
        strength=cfg.infer.strength,
    )
    sidecar = _sidecar(cfg, plan, video, result, pipeline)
    latents = result.latents if cfg.infer.save_latents else None
    caption = video.prompt if cfg.infer.frame_strip else None
    # the first free index from the plan's on: write_sample claims it, or the next free one (another run's video may
    # have taken it since)
    index = plan.first_index + video.index
    frames = to_uint8_frames(result.video)
    files = write_sample(plan.samples_dir, index, video.prompt, frames, plan.fps, sidecar, latents, caption)
    t = result.timings
    log.info(
        "wrote %s: text %.2f s, sampling %.2f s, decoding %.2f s, peak memory %.2f GB (%d frames %dx%d, seed %d)",
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
    return files


def execute(cfg, plan: SamplePlan, stdin=None) -> list[Path]:
    """Load the plan's weights and make its videos; returns the files written. `cfg` gives the sampler and infer
    settings the videos are made with; an interactive run plans each prompt from `stdin` as it comes."""
    from cogvid.inference.memory import gb
    from cogvid.inference.pipeline import load_pipeline

    if plan.memory is not None:
        log.info("memory: about %s at most (%s available)", gb(plan.memory.peak), gb(plan.memory_budget))
    if plan.skipped:
        log.info(
            "infer.resume: %d videos are already in %s; %d to make", plan.skipped, plan.samples_dir, len(plan.videos)
        )
    if plan.texts is not None and not plan.videos:
        return []
    # T5 encodes every text first and is freed before the DiT and VAE load; a sweep's later jobs reuse the weights
    pipeline = load_pipeline(cfg, prompts=None if plan.texts is None else list(plan.texts), load=plan.load)
    source = None
    if plan.source_video is not None:  # one clip for every prompt and video: encoded once
        start = time.perf_counter()
        source = pipeline.encode_video(plan.source_video)
        log.info("encoded %s in %.2f s (strength %g)", cfg.infer.video, time.perf_counter() - start, cfg.infer.strength)
    videos = plan.videos
    if plan.texts is None:  # interactive: each prompt is planned (checked) as it is read
        videos = (video for job in prompt_jobs(cfg.infer, stdin) for video in plan_videos(cfg, job))
    written: list[Path] = []
    for video in videos:
        written.extend(_write(cfg, plan, pipeline, video, source))
    return written


def _agree_across_ranks(plan: SamplePlan) -> SamplePlan:
    """Under torchrun: every rank writes into rank 0's samples dir (their own run-dir timestamps may differ by a
    second), numbering from the first free index rank 0 found."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    shared = [plan.samples_dir, plan.first_index]
    dist.broadcast_object_list(shared, src=0)
    return dataclasses.replace(plan, samples_dir=shared[0], first_index=shared[1])


# A plan made before Hydra made the run dir (`cogvid.cli.hydra_app`), for the job it was made for.
_planned: tuple[object, SamplePlan] | None = None


def plan_before_run_dir(cfg, run_dir: Path) -> None:
    """Plan a single run from its config before Hydra writes anything: a refusal then leaves no run dir."""
    global _planned
    rank, world, local_rank = dist_env()
    if world == 1:
        _planned = (cfg, plan_sample(cfg, run_dir=run_dir))


def _same_job(planned: tuple[object, SamplePlan], cfg) -> bool:
    """Whether a plan made before Hydra made the run dir is this job's: the same config, the same samples dir."""
    from cogvid.inference.outputs import SAMPLES_DIR
    from cogvid.inference.plan import output_dir

    same_config = OmegaConf.to_container(planned[0]) == OmegaConf.to_container(cfg)
    return same_config and planned[1].samples_dir.resolve() == (output_dir(cfg) / SAMPLES_DIR).resolve()


def run_sample(cfg, stdin=None) -> list[Path]:
    """Sample every prompt of a composed `sample` config; returns the files written by this rank.

    `stdin`: where infer.interactive=true reads prompts (default sys.stdin)."""
    global _planned
    rank, world, local_rank = dist_env()
    planned, _planned = _planned, None
    if planned is not None and _same_job(planned, cfg):
        plan = planned[1]
    else:
        device = None
        if world > 1:
            import torch

            if torch.cuda.is_available() and cfg.device in ("auto", "cuda"):
                device = torch.device("cuda", local_rank)
        plan = plan_sample(cfg, stdin, rank=rank, world_size=world, device=device)
    if world > 1:
        import torch.distributed as dist

        plan = _agree_across_ranks(plan)
        dist.barrier()  # every rank has read the dir before any rank writes into it
        written = execute(cfg, plan, stdin)
        dist.barrier()
        return written
    return execute(cfg, plan, stdin)
