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

from cogvid.inference.plan import PlannedVideo, SamplePlan, plan_prompt, plan_sample
from cogvid.inference.prompts import prompt_jobs

log = logging.getLogger("cogvid.sample")


def _sidecar(plan: SamplePlan, video: PlannedVideo, timings: dict[str, float]) -> dict:
    """The sidecar JSON of one video: what it shows, the plan's run-wide fields, the Hydra overrides, its timings."""
    from hydra.core.hydra_config import HydraConfig

    return {
        "prompt": video.prompt,
        "image": video.image_path,
        "index": video.index,
        "seed": video.seed,
        "num_frames": video.shape.num_frames,
        "height": video.shape.height,
        "width": video.shape.width,
        **plan.sidecar,
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


def _write(cfg, plan: SamplePlan, pipeline, video: PlannedVideo, source) -> list[Path]:
    """Make one planned video and write its files, its sidecar completed with its timings. When several ranks make
    each video (parallel.sequence, parallel.cfg), every one samples it and the first decodes and writes it."""
    from cogvid.inference.frame_strip import frame_strip
    from cogvid.inference.outputs import write_sample
    from cogvid.utils.media import to_uint8_frames

    writes = plan.rank % (plan.sequence * plan.cfg_ranks) == 0
    result = pipeline.make_video(
        video.prompt,
        video.seed,
        video.shape,
        video.tile,
        negative_prompt=cfg.infer.negative_prompt,
        image=video.image,
        progress=plan.rank == 0,
        source=source,
        strength=cfg.infer.strength,
    )
    if not writes:  # the group's ranks sampled and decoded the video together; its first one writes it
        return []
    shape = video.shape
    latents = result.latents if cfg.infer.save_latents else None
    # the first free index from the plan's on: write_sample claims it, or the next free one (another run's video may
    # have taken it since)
    index = plan.first_index + video.index
    frames = to_uint8_frames(result.video)
    strip = frame_strip(frames, video.prompt) if cfg.infer.frame_strip else None
    sidecar = _sidecar(plan, video, result.timings)
    files = write_sample(plan.samples_dir, index, video.prompt, frames, plan.sidecar["fps"], sidecar, latents, strip)
    t = result.timings
    log.info(
        "wrote %s: text %.2f s, sampling %.2f s, decoding %.2f s, peak memory %.2f GB (%d frames %dx%d, seed %d)",
        " and ".join(str(f) for f in files if f.suffix in (".mp4", ".png")),
        t["text_s"],
        t["sampling_s"],
        t["decoding_s"],
        t["peak_memory_gb"],
        shape.num_frames,
        shape.height,
        shape.width,
        video.seed,
    )
    return files


def execute(cfg, plan: SamplePlan, stdin=None) -> list[Path]:
    """Load the plan's weights and make its videos with its settings; returns the files written. `cfg` gives what
    the run writes (its infer options); an interactive run plans each prompt from `stdin` as it comes."""
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
    pipeline = load_pipeline(plan.load, plan.settings, prompts=None if plan.texts is None else list(plan.texts))
    source = None
    if plan.source_video is not None:  # one clip for every prompt and video: encoded once
        start = time.perf_counter()
        source = pipeline.encode_video(plan.source_video)
        log.info("encoded %s in %.2f s (strength %g)", cfg.infer.video, time.perf_counter() - start, cfg.infer.strength)
    videos = plan.videos
    if plan.texts is None:  # interactive: each prompt is planned (checked) as it is read, its tile measured now
        videos = (
            dataclasses.replace(video, tile=pipeline.decode_tile(video.shape))
            for job in prompt_jobs(cfg.infer, stdin)
            for video in plan_prompt(cfg, job, plan.image_to_video)
        )
    pipeline.shard, pipeline.split, pipeline.ring = _video_groups(plan)
    written: list[Path] = []
    for video in videos:
        written.extend(_write(cfg, plan, pipeline, video, source))
    return written


def _video_groups(plan: SamplePlan):
    """(this rank's SequenceShard, GuidanceSplit and ChunkRing, each None when unused). Each video is made by
    cfg x sequence consecutive ranks: the first `sequence` of them run the unconditional pass (with parallel.cfg=2;
    both passes without), split over their tokens, the next `sequence` the conditional one; all of them decode its
    chunks together."""
    per_video = plan.sequence * plan.cfg_ranks
    if per_video == 1:
        return None, None, None
    import torch.distributed as dist

    from cogvid.parallel.guidance import GuidanceSplit
    from cogvid.parallel.sequence import SequenceShard
    from cogvid.parallel.vae_decode import ChunkRing

    base, local = plan.rank - plan.rank % per_video, plan.rank % per_video
    pass_index, token_index = divmod(local, plan.sequence)
    shard = split = ring = None
    for first in range(0, plan.world_size, per_video):  # every rank makes every group, in one order
        group = dist.new_group(list(range(first, first + per_video)))
        if first == base:
            ring = ChunkRing(local, per_video, group)
        for p in range(plan.cfg_ranks) if plan.sequence > 1 else ():
            mine = SequenceShard.build(first + p * plan.sequence, plan.sequence, plan.ring, plan.rank)
            shard = mine if mine is not None else shard
        for t in range(plan.sequence) if plan.cfg_ranks > 1 else ():
            group = dist.new_group([first + t, first + plan.sequence + t])
            if first == base and t == token_index:
                split = GuidanceSplit(pass_index, group)
    return shard, split, ring


def _agree_across_ranks(plan: SamplePlan) -> SamplePlan:
    """Under torchrun: every rank writes into rank 0's samples dir (their own run-dir timestamps may differ by a
    second), numbering from the first free index rank 0 found; returns when every rank has read the dir."""
    import torch.distributed as dist

    if not dist.is_initialized():  # gloo for the CPU's tensors (and this agreement), NCCL for the GPU's
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if plan.load.device.type == "cuda" else "gloo")
    shared = [plan.samples_dir, plan.first_index]
    dist.broadcast_object_list(shared, src=0)
    dist.barrier()  # every rank has read the dir before any rank writes into it
    return dataclasses.replace(plan, samples_dir=shared[0], first_index=shared[1])


def run_sample(cfg, stdin=None, plan: SamplePlan | None = None) -> list[Path]:
    """Sample every prompt of a composed `sample` config; returns the files written by this rank.

    `stdin`: where infer.interactive=true reads prompts (default sys.stdin); `plan`: the job's plan when the caller
    made it (cogvid-sample plans a single run before Hydra makes its run dir), else it is planned here."""
    plan = plan or plan_sample(cfg, stdin)
    if plan.world_size > 1:
        plan = _agree_across_ranks(plan)
    written = execute(cfg, plan, stdin)
    if plan.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    return written
