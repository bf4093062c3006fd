"""Encode a dataset once: VAE posterior moments and T5 embeddings on disk, so training loads neither model.

On-disk layout (`data.cache`), version 1 — written here, read by `CachedLatents`:

    meta.json                       what was encoded: model, VAE scale, sizes, text length, layout
    samples/<index:08d>.safetensors one clip each (index = position in the sorted clip list):
        mean, logvar    (16, T, h, w)  the VAE posterior of the clip, VAE layout (c t h w), UNSCALED;
                                       training draws z = scale_factor * (mean + exp(logvar / 2) * n) every step
        crossattn       (L, D)         T5 last_hidden_state of the caption (L = model.text_length)
        image_mean, image_logvar (16, 1, h, w)   I2V only: the noise-augmented first frame's posterior (one draw of
                                       SAT's augmentation per clip, fixed at precompute time)
      metadata: caption, source path
    skipped-rank<r>.txt             videos rank r could not use, one `path<TAB>reason` per line

SAT's own pre-encoded 1.5 latents (`latent_input: true`) are one fixed posterior sample, stored unscaled as
(c, t, h, w); a file with a `latent` tensor instead of mean/logvar is read as such a sample.

Ranks split the clips round-robin (clip i goes to rank i mod world); a sample file is written atomically and an
existing one is kept, so an interrupted precompute continues where it stopped. The temp files of a killed run are
removed when the next one starts, and a reader takes only finished sample names (no leading dot).

Several precomputes may fill one cache at once (separate runs, or a run and its own restart): each encodes the clips
it finds missing, and a finished file takes its name only if no other run's file has it yet (`write_new`: a rename
that never replaces), so every sample ends there once, whole, from whichever run finished it first; a later one
drops its copy and counts it as kept. `meta.json` is taken the same way, and a run whose settings differ from the
meta.json another run wrote first refuses in one line before it writes a sample.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from cogvid.interop.tensor_io import safetensors_bytes
from cogvid.models.layout import to_vae_layout
from cogvid.training.data import BadVideo, ClipSpec, latent_frames, load_clip
from cogvid.training.plan import TrainPlan
from cogvid.utils.errors import CogvidError
from cogvid.utils.files import clean_stale, write_atomic, write_new
from cogvid.utils.runtime import TORCH_DTYPES, dist_env
from cogvid.utils.user_files import read_json

log = logging.getLogger(__name__)

CACHE_FORMAT = "cogvid-latents"
CACHE_VERSION = 1


def cache_meta(cfg, spec: ClipSpec, image_to_video: bool) -> dict:
    """What `data.cache/meta.json` says of latents made from clips cut as `spec` for `cfg.model` (`image_to_video`:
    with the latents of each clip's first frame)."""
    m = cfg.model
    return {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "model": m.name,
        "latent_layout": "c t h w",
        "scaled": False,
        "scale_factor": m.scale_factor,
        "z_channels": m.vae.z_channels,
        "video_size": [spec.height, spec.width],
        "num_frames": spec.num_frames,
        "latent_frames": latent_frames(spec.num_frames, m.time_compressed_rate),
        "fps": spec.fps,
        "skip_frms_num": spec.skip_frms_num,
        "text_length": m.text_length,
        "text_hidden_size": m.text_hidden_size,
        "image_latents": image_to_video,
        "source": cfg.data.root or cfg.data.manifest,
    }


def augment_first_frame(video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """SAT's I2V noise augmentation of the first frames (b, 3, 1, H, W): + sigma N(0, I), log sigma ~ N(-3, 0.5^2)."""
    b = video.shape[0]
    sigma = torch.exp(torch.randn(b, generator=generator) * 0.5 - 3.0).to(video.device, video.dtype)
    noise = torch.randn(video.shape, generator=generator).to(video.device, video.dtype)
    return video + sigma.reshape(b, 1, 1, 1, 1) * noise


@dataclass
class PrecomputeReport:
    written: int
    kept: int  # already on disk
    skipped: int


def check_cache_agrees(root: Path, meta: dict) -> None:
    """One line when `root` already holds latents made with other settings than `meta` (its source may differ)."""
    if not (root / "meta.json").is_file():
        return
    old = read_cache_meta(root)
    differ = [k for k in meta if k != "source" and old.get(k) != meta[k]]
    if differ:
        raise CogvidError(
            f"data.cache={root} holds latents made with other settings ({', '.join(differ)}); use a new folder"
        )


def run_precompute(cfg, plan: TrainPlan) -> PrecomputeReport:
    """Encode this rank's share of the plan's clips (`cogvid.training.plan.plan_train`) into its `data.cache`."""
    from cogvid.sat.loading import load_frozen_parts

    # 1. the VAE and T5, as the fit of this config would run them
    rank, world, local_rank = dist_env()
    device = torch.device(f"cuda:{local_rank}" if plan.accelerator == "gpu" else "cpu")
    frozen = load_frozen_parts(cfg.model, plan.frozen_dtype, device)
    image_seed = cfg.train.seed if plan.image_to_video else None
    encode = partial(_encode_clip, frozen.vae, frozen.text_encoder, image_seed=image_seed)
    dtype_out = TORCH_DTYPES[cfg.data.cache_dtype]

    # 2. both models loaded: the cache is written from here on
    root = plan.cache
    if rank == 0 and not (root / "meta.json").is_file():
        write_new(root / "meta.json", lambda f: f.write(json.dumps(plan.cache_meta, indent=2).encode()))
    for folder in (root, root / "samples"):
        if folder.is_dir():
            clean_stale(folder)  # temp files of a killed precompute
    check_cache_agrees(root, plan.cache_meta)  # also a meta.json another precompute wrote since this one was planned

    # 3. every clip of this rank's share whose sample is missing, encoded and claimed; then the unusable ones listed
    written = kept = 0
    skipped: list[str] = []
    for i in tqdm(range(rank, len(plan.clips), world), desc=f"precompute (rank {rank}/{world})", disable=rank != 0):
        clip = plan.clips[i]
        target = root / "samples" / f"{i:08d}.safetensors"
        if target.is_file():
            kept += 1
            continue
        try:
            video, _ = load_clip(clip.path, plan.spec)
        except BadVideo as ex:
            log.warning("skipping %s: %s", clip.path, ex)
            skipped.append(f"{clip.path}\t{ex}")
            continue
        tensors = {k: v.to(dtype_out).cpu().contiguous() for k, v in encode(video, clip.caption, i).items()}
        blob = safetensors_bytes(tensors, {"caption": clip.caption, "source": str(clip.path)})
        if write_new(target, lambda f, b=blob: f.write(b)):
            written += 1
        else:  # another precompute of this cache finished it first
            kept += 1
    report = root / f"skipped-rank{rank}.txt"
    write_atomic(report, lambda f: f.write("".join(s + "\n" for s in skipped).encode()))
    log.info(
        "precompute rank %d/%d: wrote %d, kept %d already there, skipped %d unusable videos -> %s",
        rank,
        world,
        written,
        kept,
        len(skipped),
        root,
    )
    return PrecomputeReport(written, kept, len(skipped))


@torch.no_grad()
def _encode_clip(vae, t5, video: torch.Tensor, caption: str, index: int, image_seed: int | None) -> dict:
    """The sample of one clip (F, 3, H, W), float32: its posterior moments and caption embedding; with `image_seed`
    (I2V: train.seed) also the moments of its first frame, noise-augmented with a draw of its own for clip `index`."""
    weight = next(vae.parameters())
    x = to_vae_layout(video[None]).to(weight.device, weight.dtype)  # (F, 3, H, W) -> (1, 3, F, H, W)
    mean, logvar = vae.encode_moments(x).float().chunk(2, dim=1)
    tensors = {"mean": mean[0], "logvar": logvar[0], "crossattn": t5.encode([caption])[0].float()}
    if image_seed is not None:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([image_seed, index]).generate_state(1)[0]))
        image = augment_first_frame(x[:, :, :1], g)
        image_mean, image_logvar = vae.encode_moments(image).float().chunk(2, dim=1)
        tensors |= {"image_mean": image_mean[0], "image_logvar": image_logvar[0]}
    return tensors


def read_cache_meta(root: Path) -> dict:
    """`root/meta.json` as a dict, or one line saying that it is damaged (cut off, not JSON, not UTF-8)."""
    hint = "write the cache again with task=precompute into a new folder"
    return read_json(root / "meta.json", f"data.cache={root}: ", hint=hint)


class CachedLatents(Dataset):
    """Samples of a `data.cache` folder, checked against `cfg.model` (`image_to_video`: it needs image latents): item
    {"mean", "logvar" | "latent", "crossattn", ["image_mean", ...], "batch_pos", "skipped"}."""

    def __init__(self, cfg, image_to_video: bool):
        root = Path(cfg.data.cache).expanduser()
        meta_file = root / "meta.json"
        if not meta_file.is_file():
            raise CogvidError(f"data.cache={root} is not a latent cache (no meta.json); write one with task=precompute")
        meta = read_cache_meta(root)
        if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
            raise CogvidError(f"data.cache={root}: meta.json is not a {CACHE_FORMAT} v{CACHE_VERSION} file")
        m = cfg.model
        expect = {"text_length": m.text_length, "text_hidden_size": m.text_hidden_size, "z_channels": m.vae.z_channels}
        differ = [f"{k} {meta.get(k)} (model: {v})" for k, v in expect.items() if meta.get(k) != v]
        if differ:
            raise CogvidError(
                f"data.cache={root} was made for model {meta.get('model')}, not {m.name}: {', '.join(differ)}"
            )
        if image_to_video and not meta.get("image_latents"):
            raise CogvidError(f"data.cache={root} has no I2V image latents; precompute again with model={m.name}")
        self.meta = meta
        self.files = sorted(p for p in (root / "samples").glob("*.safetensors") if not p.name.startswith("."))
        if not self.files:
            raise CogvidError(f"data.cache={root} holds no samples (samples/*.safetensors); run task=precompute first")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key):
        index, batch_pos = key
        skipped = []
        for k in range(len(self.files)):
            path = self.files[(index + k) % len(self.files)]
            try:
                tensors = load_file(path)
            except (SafetensorError, OSError) as ex:
                skipped.append((str(path), " ".join(str(ex).split())[:160]))
                continue
            item = {k: v.float() for k, v in tensors.items()}
            return item | {"batch_pos": batch_pos, "skipped": skipped}
        raise CogvidError(f"no readable sample in the latent cache (first: {skipped[0][0]}: {skipped[0][1]})")
