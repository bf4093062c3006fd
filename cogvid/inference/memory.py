"""How much memory a sampling run needs, estimated before anything loads, and what to do when it will not fit.

A run has two phases (`cogvid.inference.pipeline`): T5 encodes every prompt and is freed, then the DiT and the VAE
move to the device and make the videos. The peak is the larger phase:

    text phase:    T5 weights + its activations (+ the DiT and VAE weights on the CPU, where they wait meanwhile)
    video phase:   DiT + VAE weights + max(one guided DiT call, one decoder call of the largest chunk or tile)

Weights are counted exactly: every module is built on the meta device (no memory, no file read) and its parameters
and buffers are summed in the run's dtypes. Activations are widths of the tensors alive at the peak, measured on the
CPU (`tests/test_memory_estimate.py` holds the estimate to measured peaks at several sizes):

- one DiT call holds about DIT_WIDTHS x (b, S, D) tensors at its peak (the MLP's 4D hidden state before and after
  GELU, the residual stream and its modulated copy, the allocator's slack); SDPA's flash kernels add no (S, S)
  matrix.
- one decoder call holds about VAE_WIDTHS x (C, frames + 2, H, W) tensors at full resolution, where C is the width
  of the last upsampling's output (ch x ch_mult[1]; 256 in the released VAE) and frames those of the largest chunk
  (the causal convs pad 2 more), plus the decoded video itself.
- each phase adds a constant (kernel workspaces, allocator slack) measured at small sizes.

When the decode would not fit, `decode_tile` picks the largest spatial tile that does (`infer.vae_tile=auto`, the
default); when sampling would not fit, `check_fits` refuses with one line naming what would (bf16, fewer frames, a
smaller size).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cogvid.config.schema import Generation
from cogvid.inference.video_shape import FRAME_STEP, VideoShape, video_shape
from cogvid.utils.errors import CogvidError

log = logging.getLogger(__name__)

GB = 1024**3

# Live activations at the peak, in units of one (b, S, D) tensor of the DiT or one (C0, F, H, W) tensor of the VAE's
# full-resolution level; fitted to CPU measurements (peak RSS rise) at several sizes.
DIT_WIDTHS = 11.0
VAE_WIDTHS = 4.4
T5_WIDTHS = 12.0  # of (tokens, d_ff): T5's feed-forward states dominate its small activations
VIDEO_COPIES = 3  # the decoded video: the chunks, their concatenation and the float32 CPU copy
PHASE_OVERHEAD = 8 * 1024**2
DECODE_OVERHEAD = 24 * 1024**2  # the convolutions' kernel scratch, kept per input shape (oneDNN on the CPU)
TILE_OVERLAP = 6  # decode_tiled blends over a sixth of the tile (cogvid.models.vae.CausalVideoVAE.decode_chunked)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes each part of a run needs on its device (text_weights None: T5 is a hub id, not counted)."""

    text_weights: int | None
    text_activations: int
    dit_weights: int
    vae_weights: int
    sampling: int  # one guided DiT call
    decoding: int  # one decoder call of the largest chunk (or tile), and the decoded video
    weights_beside_t5: bool = False  # on the CPU the DiT and the VAE are in the same memory while T5 runs

    @property
    def text_phase(self) -> int:
        return (self.text_weights or 0) + self.text_activations + (self.weights if self.weights_beside_t5 else 0)

    @property
    def weights(self) -> int:
        return self.dit_weights + self.vae_weights

    @property
    def video_phase(self) -> int:
        return self.weights + max(self.sampling, self.decoding)

    @property
    def peak(self) -> int:
        return max(self.text_phase, self.video_phase)


def gb(n: int) -> str:
    return f"{n / GB:.2f} GB"


def _meta_weight_bytes(model_cfg, dtype: torch.dtype, vae_dtype: torch.dtype) -> tuple[int, int]:
    """The bytes of the DiT's and the VAE's weights (parameters and buffers; the VAE's encoder and decoder both: both
    are loaded), counted on networks built on the meta device, in no memory."""
    from cogvid.models.dit import DiffusionTransformer
    from cogvid.models.vae import CausalVideoVAE

    with torch.device("meta"):
        dit, vae = DiffusionTransformer(model_cfg), CausalVideoVAE.from_config(model_cfg.vae)
    return tuple(
        sum(t.numel() for t in (*module.parameters(), *module.buffers())) * d.itemsize
        for module, d in ((dit, dtype), (vae, vae_dtype))
    )


def dit_tokens(model_cfg, shape: VideoShape) -> int:
    """Text plus video tokens of one DiT call."""
    t, _, h, w = shape.latent
    p, p_t = model_cfg.patch_size, model_cfg.patch_size_t
    return model_cfg.text_length + (t // p_t) * (h // p) * (w // p)


def chunk_frames(model_cfg, shape: VideoShape) -> int:
    """Pixel frames of the largest decoder call of SAT's chunked decode (cogvid.models.vae.decode_chunks): k latents
    give 1 + rate (k - 1) frames where the first-frame rule applies, else rate k."""
    from cogvid.models.vae import decode_chunks

    generation = Generation(model_cfg.generation)
    t = shape.latent_frames - (1 if generation is Generation.v1_5 else 0)
    rate = model_cfg.vae.get("temporal_compress_times", 4)
    frames = []
    for start, end, rule in decode_chunks(generation, t):
        k = end - start
        frames.append(1 + rate * (k - 1) if rule.applies(k) else rate * k)
    return max(frames)


def decode_bytes(model_cfg, shape: VideoShape, dtype: torch.dtype, tile: tuple[int, int] | None) -> int:
    """One decoder call of the largest chunk over the whole frame or one tile (latents), plus the decoded video."""
    vae = model_cfg.vae
    size = dtype.itemsize
    spatial = shape.vae_spatial
    h, w = (shape.height, shape.width) if tile is None else (tile[0] * spatial, tile[1] * spatial)
    h, w = min(h, shape.height), min(w, shape.width)
    mult = list(vae.ch_mult)
    width = vae.ch * max(mult[:2])  # the last upsampling's output, or level 0's blocks
    activations = VAE_WIDTHS * width * (chunk_frames(model_cfg, shape) + 2) * h * w * size
    video = VIDEO_COPIES * 3 * shape.num_frames * shape.height * shape.width * 4  # float32, the whole clip
    return int(activations + video + DECODE_OVERHEAD)


def sampling_bytes(cfg, shape: VideoShape, dtype: torch.dtype) -> int:
    """One DiT call: batch 2 with guidance (1 with sampler.guider=none)."""
    batch = 1 if cfg.sampler.get("guider", "dynamic") == "none" else 2
    size = dtype.itemsize
    return int(DIT_WIDTHS * batch * dit_tokens(cfg.model, shape) * cfg.model.hidden_size * size) + PHASE_OVERHEAD


def estimate(
    cfg, shape: VideoShape, dtype: torch.dtype, vae_dtype: torch.dtype, tile=None, device_type: str = "cuda"
) -> MemoryEstimate:
    """The estimate of a composed sample config for one video of `shape` on a device of `device_type`; `tile`: the
    decode's [h, w] tile, if any."""
    from cogvid.models.t5 import local_t5_config, t5_weight_bytes

    m = cfg.model
    sampling, decoding = sampling_bytes(cfg, shape, dtype), decode_bytes(m, shape, vae_dtype, tile)
    dit_weights, vae_weights = _meta_weight_bytes(m, dtype, vae_dtype)
    t5 = local_t5_config(m.text_encoder.get("path"))
    text_weights = t5_weight_bytes(t5, dtype) if t5 is not None else None
    d_ff = t5["d_ff"] if t5 else 10240
    return MemoryEstimate(
        text_weights=text_weights,
        text_activations=int(T5_WIDTHS * 2 * m.text_length * d_ff * dtype.itemsize) + PHASE_OVERHEAD,
        dit_weights=dit_weights,
        vae_weights=vae_weights,
        sampling=sampling,
        decoding=decoding,
        weights_beside_t5=device_type == "cpu",
    )


def available_bytes(device: torch.device) -> int:
    """Memory free for this run: the GPU's free memory, or the CPU's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def budget_bytes(cfg, device: torch.device) -> tuple[int, str]:
    """(bytes a run may use, where that figure comes from): `memory_limit_gb`, else the device's free memory."""
    limit = cfg.get("memory_limit_gb")
    if limit is not None:
        return int(limit * GB), f"memory_limit_gb={limit:g} allows {gb(int(limit * GB))}"
    free = available_bytes(device)
    return free, f"{device} has {gb(free)} free"


def loaded_bytes(*modules: torch.nn.Module) -> int:
    """The bytes of the parameters and buffers of loaded modules."""
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))


def room_for_decode(limit: float | None, device: torch.device, held: int) -> int:
    """Bytes the decode may use now: `limit` (memory_limit_gb) less the `held` weights; else the GPU's free memory
    plus what its allocator caches unused, or the CPU's MemAvailable (the weights are already out of both)."""
    if limit is not None:
        return int(limit * GB) - held
    if device.type == "cuda":
        return available_bytes(device) + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return available_bytes(device)


def _tile_candidates(h: int, w: int) -> list[tuple[int, int]]:
    """Spatial tiles in latents, largest first: the frame cut into 2 x 2, 3 x 3, ... overlapping tiles, down to 8."""
    tiles = []
    for n in range(2, max(h, w) + 1):
        tile = (math.ceil(h / n * (1 + 1 / TILE_OVERLAP)), math.ceil(w / n * (1 + 1 / TILE_OVERLAP)))
        tile = (min(tile[0], h), min(tile[1], w))
        if min(tile) < 8 and tiles:
            break
        if not tiles or tile != tiles[-1]:
            tiles.append(tile)
    return tiles


def decode_tile(m, shape: VideoShape, vae_dtype: torch.dtype, room: int) -> tuple[int, int] | None:
    """None when the whole-frame decode fits in `room` bytes (SAT's exact decode), else the largest tile that fits;
    one line when not even the smallest does. `m`: the composed `model` group."""
    if decode_bytes(m, shape, vae_dtype, None) <= room:
        return None
    h, w = shape.latent[2:]
    for tile in _tile_candidates(h, w):
        if decode_bytes(m, shape, vae_dtype, tile) <= room:
            return tile
    smallest = _tile_candidates(h, w)[-1]
    raise CogvidError(
        f"the VAE decode of {shape.num_frames} frames at {shape.height}x{shape.width} needs "
        f"{gb(decode_bytes(m, shape, vae_dtype, smallest))} even in tiles of {list(smallest)} latents and "
        f"{gb(room)} is left after the weights: sample fewer frames or a smaller size, or vae_dtype=bf16"
    )


def vae_tile(
    setting, model_cfg, shape: VideoShape | None, vae_dtype: torch.dtype, room: Callable[[], int]
) -> tuple[int, int] | None:
    """The decode's spatial tile from `setting` (infer.vae_tile): [h, w] as set, None for off, and for auto None when
    the whole frame fits in `room()` bytes (the memory left beside the loaded weights), else the largest tile that
    does (auto without the video's `shape` decodes whole frames)."""
    if setting is None or setting == "off" or (setting == "auto" and shape is None):
        return None
    if setting != "auto":
        return tuple(setting)  # [h, w] >= 1: cogvid.config.checks
    left = room()
    tile = decode_tile(model_cfg, shape, vae_dtype, left)
    if tile is not None:
        need = gb(decode_bytes(model_cfg, shape, vae_dtype, None))
        log.info("decoding in tiles of %s latents: the whole frame needs %s, %s is left", list(tile), need, gb(left))
    return tile


def _fewer_frames(cfg, shape: VideoShape, dtype, weights: int, budget: int) -> int | None:
    """The most frames (8k + 1, at least 9) below shape.num_frames whose sampling fits `budget` beside `weights`."""
    for frames in range(shape.num_frames - FRAME_STEP, FRAME_STEP, -FRAME_STEP):
        smaller = video_shape(cfg.model, frames, shape.height, shape.width)
        if weights + sampling_bytes(cfg, smaller, dtype) <= budget:
            return frames
    return None


def check_fits(
    cfg, shape: VideoShape, device: torch.device, dtype, vae_dtype, held: int = 0
) -> tuple[MemoryEstimate, int]:
    """(the estimate, the budget) when the run fits its budget (`budget_bytes`); else one line saying what would.

    held: bytes of this run's weights already loaded (a sweep's later job), free to it though not free on the device.
    Only sampling and T5 can refuse: a decode too large for the room left is tiled (`decode_tile`)."""
    budget, source = budget_bytes(cfg, device)
    if cfg.get("memory_limit_gb") is None and held:
        budget += held
        source += f" besides the {gb(held)} of weights it holds"
    e = estimate(cfg, shape, dtype, vae_dtype, device_type=device.type)
    sampling = e.weights + e.sampling
    if e.text_phase <= budget and sampling <= budget:
        return e, budget
    if e.text_phase > budget:
        phase = "T5 (beside the DiT and VAE weights on the CPU)" if e.weights_beside_t5 else "T5"
    else:
        phase = "the DiT"
    need = e.text_phase if e.text_phase > budget else sampling
    ideas = []
    if dtype == torch.float32:
        half = estimate(cfg, shape, torch.bfloat16, torch.bfloat16, device_type=device.type)
        if max(half.text_phase, half.weights + half.sampling) <= budget:
            ideas.append(f"dtype=bf16 ({gb(max(half.text_phase, half.weights + half.sampling))})")
    if phase == "the DiT":
        frames = _fewer_frames(cfg, shape, dtype, e.weights, budget)
        if frames is not None:
            ideas.append(f"infer.num_frames={frames}")
    hint = f": try {' or '.join(ideas)}" if ideas else ": nothing smaller of this model fits; free memory first"
    raise CogvidError(
        f"{phase} needs about {gb(need)} for {shape.num_frames} frames at {shape.height}x{shape.width} "
        f"({dtype_label(dtype)}), but {source}{hint}"
    )


def dtype_label(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
