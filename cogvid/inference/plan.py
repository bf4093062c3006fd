"""Plan, then run: `plan_sample(cfg)` turns a composed `sample` config into one frozen `SamplePlan`, checked once
before any weights load or file is written; `cogvid.inference.run.execute` then makes the videos it lists and
decides nothing.

The plan is made in this order, cheapest first, so a bad input costs a second, not a model load:
1. the option values (`check_values`);
2. the prompts and each one's image path (checked against the model); then the files they name, read now: the source
   clip of video to video (cut to its checked shape) and every image; then each video's checked shape and seed;
3. the weights: every path exists, the device and both dtypes, the key of what the weights depend on (`plan_loading`
   -> `LoadPlan`, which `VideoPipeline.from_plan` loads, with the `VideoSettings` the videos are made with); and the
   memory: the largest video must fit (`cogvid.inference.memory.check_fits`);
4. the output folder (proved writable, not created), and with infer.resume=true the videos already there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cogvid.config.checks import check_values
from cogvid.config.schema import ImageLatentScaling, Uncond, is_image_to_video
from cogvid.inference.prompts import PromptJob, prompt_jobs, shard
from cogvid.inference.video_shape import VideoShape, job_video_shape, video_shape
from cogvid.utils.errors import CogvidError

SAT_LAYOUT = "<variant>-sat/transformer/{latest, 1000/mp_rank_00_model_states.pt}, <variant>-sat/vae/3d-vae.pt"
# What a video's settings hash leaves out: where prompts come from and where videos go (the prompt, the image and the
# seed of each video are compared one by one).
NOT_SETTINGS = (
    "prompt",
    "prompts_file",
    "interactive",
    "output_dir",
    "resume",
    "seed",
    "num_videos_per_prompt",
    "image",
)


@dataclass(frozen=True)
class LoadPlan:
    """What the weights of a run are and where they go: everything `VideoPipeline.from_plan` needs."""

    model: Any  # the composed `model` group (sizes, paths, LoRA)
    device: Any  # torch.device
    dtype: Any  # torch.dtype the DiT and T5 compute in
    vae_dtype: Any  # torch.dtype of the VAE
    compile: bool
    dtype_names: tuple[str, str]  # of dtype and vae_dtype, as sidecars write them
    weights_key: str  # what the loaded weights depend on; a sweep's later job with the same key reuses them


@dataclass(frozen=True)
class VideoSettings:
    """The sampler and infer settings a `VideoPipeline` makes videos with, resolved from the composed config
    (`video_settings`): what it reads instead of the config."""

    sampler: Any  # the composed `sampler` group (solver, schedule, guidance, steps, uncond)
    num_frames: int | None  # infer.num_frames, height, width: a video's default shape (None: the variant's)
    height: int | None
    width: int | None
    head_frame_quirk: bool  # infer.head_frame_quirk: how the decode treats the first frame
    image_posterior_sample: bool  # infer.image_posterior_sample: draw the I2V image latent, else its mean
    image_latent_scaling: ImageLatentScaling  # infer.image_latent_scaling
    vae_tile: Any  # infer.vae_tile: "auto", "off" or None, or a [h, w] tile in latents
    memory_limit_gb: float | None  # the decode's room under auto tiling (None: the device's free memory)


def video_settings(cfg) -> VideoSettings:
    """The `VideoSettings` of a composed config (its `sampler` and `infer` groups, and memory_limit_gb)."""
    infer = cfg.infer
    return VideoSettings(
        sampler=cfg.sampler,
        num_frames=infer.num_frames,
        height=infer.height,
        width=infer.width,
        head_frame_quirk=bool(infer.head_frame_quirk),
        image_posterior_sample=bool(infer.image_posterior_sample),
        image_latent_scaling=ImageLatentScaling(infer.image_latent_scaling),
        vae_tile=infer.get("vae_tile", "auto"),
        memory_limit_gb=cfg.get("memory_limit_gb"),
    )


@dataclass(frozen=True)
class PlannedVideo:
    """One video of the run: what it shows, from which seed, and at which index its files are first tried."""

    index: int  # position among the run's videos (prompt index x num_videos_per_prompt + k); seed = infer.seed + index
    prompt: str
    seed: int
    image: Any  # the PIL image of image to video, else None
    image_path: str | None
    shape: VideoShape
    source: str  # where the prompt came from, for messages
    tile: tuple[int, int] | None = None  # the decode's spatial tile in latents (None: whole frames)


@dataclass(frozen=True)
class SamplePlan:
    """Every decision of one cogvid-sample job (this rank's share of it under torchrun)."""

    load: LoadPlan
    settings: VideoSettings  # what the pipeline makes each video with
    videos: tuple[PlannedVideo, ...]  # to make, in order (an interactive run plans each prompt as it comes)
    texts: tuple[str, ...] | None  # every text T5 encodes before it is freed (None: interactive, T5 stays)
    source_video: Any  # video to video: the clip (3, F, H, W) in [-1, 1], else None
    samples_dir: Path  # where the videos go (rank 0's, once run_sample has agreed it across ranks)
    first_index: int  # video i is first tried at index first_index + i (the first free index when planned; resumed:
    # the first index of the run it resumes)
    settings_hash: str  # every setting that shapes a video but its prompt, image and seed (the resume key)
    skipped: int  # infer.resume: videos already in samples_dir with this prompt, image, seed and settings
    sidecar: dict  # what every video's sidecar says of the run
    memory: Any  # the largest video's MemoryEstimate (None: interactive, sizes unknown)
    memory_budget: int  # the bytes the run may use (memory_limit_gb, else the device's free memory)
    image_to_video: bool  # the model takes an image per prompt
    rank: int
    world_size: int
    sequence: int = 1  # parallel.sequence: ranks that split each video's tokens
    cfg_ranks: int = 1  # parallel.cfg: 2 when the two guidance passes run on two ranks (or sequence groups)
    ring: int = 1  # parallel.ring: of the `sequence` ranks, the ring degree (the rest are Ulysses)


def check_weight_paths(model) -> None:
    """One line per missing weight, naming what SAT's release layout puts where; nothing is loaded here."""
    from cogvid.config.checks import check_vae_file
    from cogvid.models.t5 import RELEASE_LAYOUT, check_t5_folder
    from cogvid.sat.checkpoint import resolve_sat_checkpoint

    if not model.ckpt:
        raise CogvidError(
            f"model.ckpt is not set: give the SAT transformer folder, e.g. model.ckpt=/weights/{model.name}-sat/"
            f"transformer (release layout: {SAT_LAYOUT})"
        )
    if not Path(model.ckpt).expanduser().exists():
        raise CogvidError(
            f"model.ckpt={model.ckpt}: no such folder; expected the SAT transformer folder ({SAT_LAYOUT})"
        )
    resolve_sat_checkpoint(Path(model.ckpt).expanduser())  # the folder's latest / <iter> file exists (not read here)
    if model.get("lora_ckpt"):
        resolve_sat_checkpoint(Path(model.lora_ckpt).expanduser())
    if not model.vae_ckpt:
        raise CogvidError(
            "model.vae_ckpt is not set: give SAT's VAE file, e.g. "
            f"model.vae_ckpt=/weights/{model.name}-sat/vae/3d-vae.pt"
        )
    if not model.text_encoder.path:
        raise CogvidError(
            "model.text_encoder.path is not set: give the T5 folder, e.g. model.text_encoder.path=/weights/t5-v1_1-xxl"
            f" ({RELEASE_LAYOUT}), or a hub id such as google/t5-v1_1-xxl"
        )
    check_t5_folder(model.text_encoder.path, model.text_hidden_size)  # a local folder's files are readable
    check_vae_file(model.vae_ckpt)


def _files_state(path) -> list:
    """(name, size, mtime) of the file at `path`, or of every file under the folder, sorted; [] for no path."""
    if not path:
        return []
    root = Path(path).expanduser()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return [(str(p), (st := p.stat()).st_size, st.st_mtime_ns) for p in files]


def weights_key(model, mode, settings: dict) -> str:
    """What the loaded weights depend on: the whole model and mode configs (paths, sizes, LoRA), the dtypes and the
    device, and the state of every weight file (weights rewritten in place are loaded again)."""
    parts = {"model": OmegaConf.to_container(model, resolve=True), **settings}
    if mode is not None:
        parts["mode"] = OmegaConf.to_container(mode, resolve=True)
    paths = (model.get("ckpt"), model.get("lora_ckpt"), model.get("vae_ckpt"), model.text_encoder.get("path"))
    parts["files"] = [_files_state(path) for path in paths]
    return json.dumps(parts, sort_keys=True, default=str)


def plan_loading(cfg) -> LoadPlan:
    """The checked weights of a composed config: option values, weight paths, device and dtypes."""
    check_values(cfg)  # first: a refused value costs no torch import
    return _load_plan(cfg)


def _load_plan(cfg, local_rank: int | None = None) -> LoadPlan:
    """`plan_loading` after the option values are checked; `local_rank`: a torchrun rank's GPU."""
    check_weight_paths(cfg.model)
    from cogvid.utils.runtime import dtype_name, resolve_device_dtype

    device, dtype, vae_dtype = resolve_device_dtype(cfg, local_rank)
    names = (dtype_name(dtype), dtype_name(vae_dtype))
    key = weights_key(cfg.model, cfg.get("mode"), {"dtype": names[0], "vae_dtype": names[1], "device": str(device)})
    return LoadPlan(cfg.model, device, dtype, vae_dtype, bool(cfg.get("compile")), names, key)


def check_image_agrees(name: str, image_to_video: bool, image, source: str) -> None:
    """One line when a job's image (a path or a PIL image, None for none) does not fit model `name`:
    image-to-video needs one, text-to-video takes none."""
    if image_to_video and image is None:
        raise CogvidError(f"{source}: {name} is image-to-video; give infer.image=PATH or a prompt@@image line")
    if not image_to_video and image is not None:
        raise CogvidError(
            f"{source}: {name} is text-to-video, so it takes no image (the image-to-video variants "
            "are model=5b_i2v and model=1.5_5b_i2v)"
        )


def job_image(cfg, job: PromptJob, image_to_video: bool) -> str | None:
    """The image path of one prompt (its own, else infer.image; None for none), checked against the model."""
    path = job.image or cfg.infer.image
    check_image_agrees(cfg.model.name, image_to_video, path, job.source)
    return path


def plan_videos(cfg, job: PromptJob, path: str | None, image) -> list[PlannedVideo]:
    """The infer.num_videos_per_prompt videos of one prompt, its image at `path` read as `image` (None for none),
    with the checked shape and the seed of each."""
    shape = job_video_shape(cfg.model, cfg.infer, None if image is None else (image.height, image.width))
    n = cfg.infer.num_videos_per_prompt
    return [
        PlannedVideo(i, job.prompt, cfg.infer.seed + i, image, path, shape, job.source)
        for i in range(job.index * n, job.index * n + n)
    ]


def plan_prompt(cfg, job: PromptJob, image_to_video: bool) -> list[PlannedVideo]:
    """The videos of one prompt as it comes (infer.interactive): its image checked and read, then `plan_videos`."""
    from cogvid.utils.media import read_image

    path = job_image(cfg, job, image_to_video)
    return plan_videos(cfg, job, path, None if path is None else read_image(path))


def settings_hash(cfg) -> str:
    """A short hash of every resolved setting that shapes a video, less its prompt, image and seed (NOT_SETTINGS):
    what infer.resume compares with a finished video's sidecar, so a changed setting is never taken as done."""
    from cogvid.inference.outputs import config_hash

    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["infer"] = {k: v for k, v in resolved["infer"].items() if k not in NOT_SETTINGS}
    return config_hash(resolved)


def _check_memory(cfg, load: LoadPlan, shapes: list[VideoShape]):
    """(the estimate of the largest video, the budget); one line, before anything loads, when it would not fit.
    Weights a sweep's earlier job still holds count as free to this one."""
    from cogvid.inference import memory
    from cogvid.inference.pipeline import held_bytes

    largest = max(shapes, key=lambda s: s.num_frames * s.height * s.width)
    return memory.check_fits(cfg, largest, load.device, load.dtype, load.vae_dtype, held=held_bytes(load.weights_key))


def _tile(settings: VideoSettings, load: LoadPlan, shape: VideoShape, room: int) -> tuple[int, int] | None:
    from cogvid.inference.memory import vae_tile

    return vae_tile(settings.vae_tile, load.model, shape, load.vae_dtype, lambda: room)


def _sidecar_fields(cfg, load: LoadPlan, negative: bool, ignored: list[str], key: str, rank: int) -> dict:
    """What every video's JSON sidecar says of the run (its own prompt, seed, size and timings come with it)."""
    from cogvid.inference.outputs import config_hash

    resolved = OmegaConf.to_container(cfg, resolve=True)
    return {
        "negative_prompt": cfg.infer.negative_prompt if negative else None,
        "uncond": Uncond(cfg.sampler.uncond).value,
        "video": cfg.infer.video,  # video to video: the source clip, re-noised to `strength`
        "strength": cfg.infer.strength if cfg.infer.video is not None else None,
        "ignored": ignored,  # set options that act only with another one, which is off here
        "rank": rank,
        "fps": int(cfg.infer.fps or cfg.model.default_fps),
        "model": cfg.model.name,
        "sampler": resolved["sampler"],
        "steps": cfg.sampler.num_steps,
        "guidance_scale": cfg.sampler.guidance_scale,
        "dtype": load.dtype_names[0],
        "vae_dtype": load.dtype_names[1],
        "device": str(load.device),
        "config_hash": config_hash(resolved),
        "settings_hash": key,  # what infer.resume compares (settings_hash)
    }


def plan_sample(cfg, stdin=None, run_dir: Path | None = None) -> SamplePlan:
    """The checked plan of a composed `sample` config (see the module doc) for this process (its share under
    torchrun). `run_dir`: the Hydra run dir the job will write to when it is planned before Hydra made it."""
    from cogvid.config.pairings import ignored_options

    # 1. the option values, and what they make of the run: config only, no torch import yet
    check_values(cfg)
    negative = Uncond(cfg.sampler.uncond) is Uncond.negative_prompt
    ignored = ignored_options(cfg)
    image_to_video = is_image_to_video(cfg.model)
    from cogvid.inference.outputs import survey_samples  # torch from here on
    from cogvid.utils.media import read_image
    from cogvid.utils.runtime import dist_env

    rank, world_size, local_rank = dist_env()
    sequence = cfg.parallel.sequence  # ranks that split a video's tokens
    per_video = sequence * cfg.parallel.cfg  # ranks per video; the groups of them take the prompts in turn
    # 2. the inputs (every rank checks them all): each prompt's image path, agreeing with the model, and the source
    # clip's shape; then the files they name, read now (the clip cut): a bad input costs no model load
    jobs = [] if cfg.infer.interactive else list(prompt_jobs(cfg.infer, stdin))
    paths = {job.index: job_image(cfg, job, image_to_video) for job in jobs}
    source_video = None
    if cfg.infer.video is not None:
        from cogvid.inference.source_video import read_source_video

        source_shape = video_shape(cfg.model, cfg.infer.num_frames, cfg.infer.height, cfg.infer.width)
        source_video = read_source_video(cfg, source_shape)
    images = {path: read_image(path) for path in dict.fromkeys(paths.values()) if path is not None}
    planned = {job.index: plan_videos(cfg, job, paths[job.index], images.get(paths[job.index])) for job in jobs}
    # 3. the weights, and the memory of the largest video beside them
    load = _load_plan(cfg, local_rank if world_size > 1 else None)
    settings = video_settings(cfg)
    shapes = [video.shape for videos in planned.values() for video in videos]
    estimate, budget = _check_memory(cfg, load, shapes) if shapes else (None, 0)
    if shapes:  # each shape's decode tile, in the memory the weights leave (a decode too large is refused now)
        tiles = {shape: _tile(settings, load, shape, budget - estimate.weights) for shape in set(shapes)}
        planned = {i: [replace(v, tile=tiles[v.shape]) for v in videos] for i, videos in planned.items()}
    # 4. where the videos go, and which of them a resumed run still makes
    key = settings_hash(cfg)
    out_dir = output_dir(cfg, run_dir)
    videos = [video for index in shard(planned, rank // per_video, world_size // per_video) for video in planned[index]]
    sidecar = _sidecar_fields(cfg, load, negative, ignored, key, rank)
    folder = survey_samples(out_dir, key, cfg.infer.resume)
    # each video claims the first free index from its own on; a resumed run's videos take the numbers it gave them
    kept = [v for v in videos if (v.prompt, v.image_path, v.seed) not in folder.finished]
    skipped, videos = len(videos) - len(kept), kept
    first_index = min(folder.finished.values(), default=folder.first_index)
    texts = [video.prompt for video in videos] + ([cfg.infer.negative_prompt or ""] if negative else [])
    return SamplePlan(
        load=load,
        settings=settings,
        videos=tuple(videos),
        texts=None if cfg.infer.interactive else tuple(dict.fromkeys(texts)),
        source_video=source_video,
        samples_dir=folder.path,
        first_index=first_index,
        settings_hash=key,
        skipped=skipped,
        sidecar=sidecar,
        memory=estimate,
        memory_budget=budget,
        image_to_video=image_to_video,
        rank=rank,
        world_size=world_size,
        sequence=sequence,
        cfg_ranks=cfg.parallel.cfg,
        ring=cfg.parallel.ring,
    )


def output_dir(cfg, run_dir: Path | None = None) -> Path:
    """infer.output_dir (plus the job number in a sweep), else the Hydra run dir (`run_dir` when the job is planned
    before Hydra made it), else ./outputs."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get() if HydraConfig.initialized() else None
    sweeping = hc is not None and hc.mode == RunMode.MULTIRUN
    if cfg.infer.output_dir:
        base = Path(cfg.infer.output_dir).expanduser()
        return base / str(hc.job.num) if sweeping else base
    if run_dir is not None:
        return Path(run_dir)
    return Path(hc.runtime.output_dir) if hc is not None else Path("outputs")
