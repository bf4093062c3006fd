"""The CogVideoX 3-D causal VAE (SAT `vae_modules/cp_enc_dec.py` at cp_size 1), both code generations.

Module names follow SAT, so `state_dict()` gives the keys of the released `3d-vae.pt` exactly: `encoder.*` and
`decoder.*`. Video and latents are in VAE layout `(b, c, t, h, w)` and unscaled: the callers (the inference
pipeline, the training module) multiply by `scale_factor` after `encode` and divide before `decode`.

Time is causal: pixel frame 0 becomes latent frame 0 alone, then every 4 frames become one latent frame
(F = 1 + 4 (T - 1)). Which temporal lengths get that "first frame apart" treatment differs between the code
generations and is chosen with `FirstFrame`. Chunked decoding (`decode_chunked`) carries each causal convolution's
last input frames from chunk to chunk, exactly as SAT's `sample_video.py` (v1.0) and `decode_first_stage` (HEAD).

Building blocks first, the model last.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from tqdm.auto import tqdm

from cogvid.config.schema import Generation
from cogvid.utils.errors import CogvidError

GROUPS = 32  # SAT hard-codes GroupNorm(32, C): every width must be a multiple of 32
NORM_EPS = 1e-6
LOGVAR_RANGE = (-30.0, 20.0)  # SAT DiagonalGaussianDistribution clamps the posterior's logvar to this
SAFE_CONV_BYTES = 2 * 1024**3  # SAT's SafeConv3d runs a larger input through the conv in time slices


class FirstFrame(str, Enum):
    """When down/up-sampling and SpatialNorm3D treat frame 0 apart from the others."""

    odd = "odd"  # v1.0 and diffusers: whenever the current length t is odd and > 1
    always = "always"  # HEAD with fake_cp on cp rank 0: whenever t > 1 (the encoder; 1.5's intended first chunk)
    never = "never"  # HEAD decode at cp_size <= 1, where `use_cp` is forced False: every latent -> 4 frames

    def applies(self, t: int) -> bool:
        return t > 1 and (self is FirstFrame.always or (self is FirstFrame.odd and t % 2 == 1))


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(32, C, eps 1e-6) on the 5-D tensor: statistics over channels-in-group x T x H x W jointly."""
    return nn.GroupNorm(GROUPS, channels, eps=NORM_EPS, affine=True)


def _conv3d_time_sliced(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` for a time-padded x, in slices of output frames when x exceeds 2 GiB (SAT SafeConv3d).

    Output frame j reads input frames j .. j + k - 1, so slicing the outputs is exact.
    """
    if x.numel() * x.element_size() <= SAFE_CONV_BYTES:
        return conv(x)
    k = conv.kernel_size[0]
    t_out = x.shape[2] - k + 1
    n_slices = min(t_out, x.numel() * x.element_size() // SAFE_CONV_BYTES + 1)
    bounds = [round(i * t_out / n_slices) for i in range(n_slices + 1)]
    return torch.cat([conv(x[:, :, a : b + k - 1]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)], dim=2)


class CausalConv3d(nn.Module):
    """SAT `ContextParallelCausalConv3d` (cp_size 1): stride 1, causal in time, zero "same" padding in space.

    Time padding prepends k - 1 frames: the cache (the last k - 1 frames of the previous call's time-padded input)
    when one is held, else k - 1 copies of frame 0. Every call empties the cache after reading it; a call with
    `clear_cache=False` then stores its own last k - 1 padded frames for the next call.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3):
        super().__init__()
        self.time_pad = kernel_size - 1
        # zero "same" padding in space inside the convolution (no padded copy of the input); none in time
        self.conv = nn.Conv3d(c_in, c_out, kernel_size, padding=(0, kernel_size // 2, kernel_size // 2))
        self.cache: torch.Tensor | None = None  # (b, c_in, k - 1, h, w), never part of the state dict
        # halo(x, k - 1) -> the leading frames from the rank decoding the previous chunk, or None for frame 0's copies
        # (cogvid.parallel.vae_decode); set only while a context-parallel decode runs
        self.halo = None

    def forward(self, x: torch.Tensor, clear_cache: bool = True) -> torch.Tensor:
        # x: (b, c_in, t, h, w) -> (b, c_out, t, h, w)
        if self.time_pad:
            head = self.halo(x, self.time_pad) if self.halo is not None else self.cache
            if head is not None:
                head = head.to(device=x.device, dtype=x.dtype)
            else:
                head = x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)
            x = torch.cat([head, x], dim=2)  # b c (k-1+t) h w
            self.cache = None if clear_cache else x[:, :, -self.time_pad :].detach().clone()
        return _conv3d_time_sliced(self.conv, x)


class SpatialNorm3D(nn.Module):
    """Decoder norm conditioned on the latent: GroupNorm(f) * conv_y(zq) + conv_b(zq), zq resized (nearest) to f."""

    def __init__(self, channels: int, z_channels: int):
        super().__init__()
        self.norm_layer = group_norm(channels)
        self.conv_y = CausalConv3d(z_channels, channels, kernel_size=1)
        self.conv_b = CausalConv3d(z_channels, channels, kernel_size=1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor, first_frame: FirstFrame) -> torch.Tensor:
        # f: (b, c, t, h, w); zq: (b, z, t_z, h_z, w_z), the latents this decoder call started from
        t, h, w = f.shape[-3:]
        if first_frame.applies(t):  # latent frame 0 -> feature frame 0, the rest -> the other t - 1 frames
            zq = torch.cat(
                [
                    F.interpolate(zq[:, :, :1], size=(1, h, w), mode="nearest"),
                    F.interpolate(zq[:, :, 1:], size=(t - 1, h, w), mode="nearest"),
                ],
                dim=2,
            )
        else:
            zq = F.interpolate(zq, size=(t, h, w), mode="nearest")
        if torch.is_grad_enabled():
            return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)
        # Inference: both 1x1x1 convolutions as one batched matmul over the channels (torch's conv3d takes a slow
        # path for them), written into the fresh norm output.
        y, b = self._scale_and_shift(zq)
        return self.norm_layer(f).mul_(y).add_(b)

    def _scale_and_shift(self, zq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """conv_y(zq), conv_b(zq) for kernel-1 convs: [W_y; W_b] (2c, z) @ zq (b, z, t h w) + [b_y; b_b]."""
        convs = (self.conv_y.conv, self.conv_b.conv)
        weight = torch.cat([conv.weight.flatten(1) for conv in convs])  # (2c, z)
        bias = torch.cat([conv.bias for conv in convs])
        batch, _, *grid = zq.shape
        both = torch.baddbmm(bias[None, :, None], weight.expand(batch, -1, -1), zq.flatten(2))  # (b, 2c, t h w)
        return both.view(batch, -1, *grid).chunk(2, dim=1)


class ResnetBlock3D(nn.Module):
    """norm1 -> SiLU -> conv1 -> norm2 -> SiLU -> conv2, plus x (through a 1x1x1 `nin_shortcut` when c_in != c_out).

    The norms are GroupNorm in the encoder and SpatialNorm3D (given `z_channels`) in the decoder.
    """

    def __init__(self, c_in: int, c_out: int, z_channels: int | None = None):
        super().__init__()
        self.spatial = z_channels is not None
        self.norm1 = SpatialNorm3D(c_in, z_channels) if self.spatial else group_norm(c_in)
        self.conv1 = CausalConv3d(c_in, c_out)
        self.norm2 = SpatialNorm3D(c_out, z_channels) if self.spatial else group_norm(c_out)
        self.conv2 = CausalConv3d(c_out, c_out)
        self.nin_shortcut = nn.Conv3d(c_in, c_out, kernel_size=1) if c_in != c_out else None

    def _norm(self, norm: nn.Module, h: torch.Tensor, zq, first_frame: FirstFrame) -> torch.Tensor:
        return norm(h, zq, first_frame) if self.spatial else norm(h)

    def forward(
        self, x: torch.Tensor, zq=None, clear_cache: bool = True, first_frame: FirstFrame = FirstFrame.odd
    ) -> torch.Tensor:
        # x: (b, c_in, t, h, w) -> (b, c_out, t, h, w)
        inference = not torch.is_grad_enabled()  # then every op below may write into its fresh input
        h = self.conv1(F.silu(self._norm(self.norm1, x, zq, first_frame), inplace=inference), clear_cache)
        h = self.conv2(F.silu(self._norm(self.norm2, h, zq, first_frame), inplace=inference), clear_cache)  # no dropout
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return h.add_(shortcut) if inference else shortcut + h


class DownSample3D(nn.Module):
    """Halve time (average pairs; frame 0 kept alone with first-frame handling), then H and W by a 3x3 Conv2d
    with stride 2 on each frame after zero padding right and bottom by 1."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.compress_time = compress_time
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor, first_frame: FirstFrame) -> torch.Tensor:
        # x: (b, c, t, h, w) -> (b, c, t', h/2, w/2); t' = 1 + (t-1)//2 with first-frame handling, else t//2
        b, t = x.shape[0], x.shape[2]
        if self.compress_time and t > 1:
            if first_frame.applies(t):
                x = torch.cat([x[:, :, :1], F.avg_pool3d(x[:, :, 1:], kernel_size=(2, 1, 1))], dim=2)
            else:
                x = F.avg_pool3d(x, kernel_size=(2, 1, 1))
        x = F.pad(x, (0, 1, 0, 1))
        frames = self.conv(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(frames, "(b t) c h w -> b c t h w", b=b)


class Upsample3D(nn.Module):
    """Double time (nearest; frame 0 only upscaled in space with first-frame handling) and H and W, then a 3x3
    Conv2d on each frame. Without `compress_time`, or at t = 1, only H and W are doubled."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.compress_time = compress_time
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, first_frame: FirstFrame) -> torch.Tensor:
        # x: (b, c, t, h, w) -> (b, c, t', 2h, 2w); t' = 2t - 1 with first-frame handling, 2t with plain, t else
        b, t = x.shape[0], x.shape[2]
        if self.compress_time and t > 1:
            if first_frame.applies(t):
                first = F.interpolate(x[:, :, :1], scale_factor=(1.0, 2.0, 2.0), mode="nearest")
                rest = F.interpolate(x[:, :, 1:], scale_factor=2.0, mode="nearest")
                x = torch.cat([first, rest], dim=2)
            else:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        frames = self.conv(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(frames, "(b t) c h w -> b c t h w", b=b)


class DownLevel(nn.Module):
    """One encoder resolution: `block.{j}` resnets, then `downsample` (all levels but the last)."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, downsample: DownSample3D | None):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock3D(c_in if j == 0 else c_out, c_out) for j in range(n_blocks))
        self.downsample = downsample


class UpLevel(nn.Module):
    """One decoder resolution: `block.{j}` resnets with SpatialNorm3D, then `upsample` (all levels but level 0)."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, z_channels: int, upsample: Upsample3D | None):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock3D(c_in if j == 0 else c_out, c_out, z_channels) for j in range(n_blocks))
        self.upsample = upsample


class MidBlock(nn.Module):
    def __init__(self, channels: int, z_channels: int | None = None):
        super().__init__()
        self.block_1 = ResnetBlock3D(channels, channels, z_channels)
        self.block_2 = ResnetBlock3D(channels, channels, z_channels)


class Encoder3D(nn.Module):
    """SAT `ContextParallelEncoder3D`: video (b, 3, F, H, W) -> moments (b, 2z, 1 + (F-1)/4, H/8, W/8)."""

    def __init__(
        self,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        in_channels: int,
        z_channels: int,
        time_levels: int,
    ):
        super().__init__()
        self.conv_in = CausalConv3d(in_channels, ch)
        self.down = nn.ModuleList()
        c = ch
        for i, mult in enumerate(ch_mult):
            last = i == len(ch_mult) - 1
            downsample = None if last else DownSample3D(ch * mult, compress_time=i < time_levels)
            self.down.append(DownLevel(c, ch * mult, num_res_blocks, downsample))
            c = ch * mult
        self.mid = MidBlock(c)
        self.norm_out = group_norm(c)
        self.conv_out = CausalConv3d(c, 2 * z_channels)

    def forward(self, x: torch.Tensor, first_frame: FirstFrame = FirstFrame.odd) -> torch.Tensor:
        # 1. x: (b, 3, F, H, W) -> (b, ch, F, H, W)
        h = self.conv_in(x)
        # 2. resolutions: resnets, then halve (t, h, w) at the time levels, (h, w) at the others
        for level in self.down:
            for block in level.block:
                h = block(h)
            if level.downsample is not None:
                h = level.downsample(h, first_frame)
        # 3. middle, then norm -> SiLU -> conv to [mean | logvar]: (b, 2z, T, H/8, W/8)
        h = self.mid.block_2(self.mid.block_1(h))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder3D(nn.Module):
    """SAT `ContextParallelDecoder3D`: latents (b, z, T, h, w) -> video (b, 3, F, 8h, 8w).

    `up[i]` is resolution i (SAT's order), run from the coarsest `up[n-1]` down to `up[0]`; every norm is a
    SpatialNorm3D reading the latents of this call.
    """

    def __init__(
        self,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        out_channels: int,
        z_channels: int,
        time_levels: int,
    ):
        super().__init__()
        n = len(ch_mult)
        c = ch * ch_mult[-1]
        self.conv_in = CausalConv3d(z_channels, c)
        self.mid = MidBlock(c, z_channels)
        levels = []
        for i in reversed(range(n)):
            upsample = None if i == 0 else Upsample3D(ch * ch_mult[i], compress_time=i >= n - time_levels)
            levels.append(UpLevel(c, ch * ch_mult[i], num_res_blocks + 1, z_channels, upsample))
            c = ch * ch_mult[i]
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = SpatialNorm3D(c, z_channels)
        self.conv_out = CausalConv3d(c, out_channels)

    def causal_convs(self) -> list[CausalConv3d]:
        return [m for m in self.modules() if isinstance(m, CausalConv3d)]

    def clear_cache(self) -> None:
        """Forget the frames any causal conv carried over from an earlier `clear_cache=False` call."""
        for conv in self.causal_convs():
            conv.cache = None

    def forward(
        self, z: torch.Tensor, clear_cache: bool = True, first_frame: FirstFrame = FirstFrame.odd
    ) -> torch.Tensor:
        # 1. z: (b, z, T, h, w) -> (b, C, T, h, w); z is also every SpatialNorm3D's zq
        zq = z
        h = self.conv_in(z, clear_cache)
        h = self.mid.block_1(h, zq, clear_cache, first_frame)
        h = self.mid.block_2(h, zq, clear_cache, first_frame)
        # 2. resolutions, coarsest first: resnets, then double (t, h, w) at the time levels, (h, w) at the others
        for level in reversed(self.up):
            for block in level.block:
                h = block(h, zq, clear_cache, first_frame)
            if level.upsample is not None:
                h = level.upsample(h, first_frame)
        # 3. norm -> SiLU -> conv to RGB: (b, 3, F, 8h, 8w), about [-1, 1]
        h = F.silu(self.norm_out(h, zq, first_frame), inplace=not torch.is_grad_enabled())
        return self.conv_out(h, clear_cache)


def decode_chunks(generation: Generation, t: int, head_frame_quirk: bool = False) -> list[tuple[int, int, FirstFrame]]:
    """The latent chunks `(start, end, first-frame rule)` of SAT's chunked decode of t latent frames.

    v1.0 (`sample_video.py`): [0:3], then pairs [3:5], [5:7], ...; a chunk gets first-frame handling when its length
    is odd (so only the first). t must be odd: SAT would silently drop the last latent of an even t.
    1.5 (HEAD `decode_first_stage`, after it drops latent 0): n = min(10, t // 2) chunks of t // n latents, the first
    t % n one longer. HEAD meant the first chunk to get first-frame handling (use_cp=True) and the others none,
    giving 4t - 3 frames as diffusers does; at cp_size 1 it forces use_cp off, so every chunk gets none and every
    latent becomes 4 frames (4t): that is `head_frame_quirk`.
    """
    generation = Generation(generation)
    if t < 1:
        raise CogvidError("nothing to decode: the latent has 0 frames")
    if generation is Generation.v1_0:
        if t == 1:
            return [(0, 1, FirstFrame.odd)]
        if t % 2 == 0:
            raise CogvidError(
                f"v1.0 decodes latents in chunks [0:3], [3:5], ...: it needs an odd number of latent frames, got {t}"
            )
        return [(0, 3, FirstFrame.odd)] + [(s, s + 2, FirstFrame.odd) for s in range(3, t, 2)]
    n = max(1, min(10, t // 2))
    chunks, start = [], 0
    for i in range(n):
        end = start + t // n + (1 if i < t % n else 0)
        rule = FirstFrame.always if i == 0 and not head_frame_quirk else FirstFrame.never
        chunks.append((start, end, rule))
        start = end
    return chunks


def _time_levels(temporal_compress_times: int) -> int:
    levels = int(math.log2(temporal_compress_times)) if temporal_compress_times >= 1 else -1
    if levels < 0 or 2**levels != temporal_compress_times:
        raise ValueError(f"temporal_compress_times must be a power of two, got {temporal_compress_times}")
    return levels


def sample_posterior(
    mean: torch.Tensor,
    logvar: torch.Tensor,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """SAT DiagonalGaussianDistribution.sample: mean + exp(0.5 clamp(logvar, -30, 20)) * noise.

    The noise is `noise` if given, else drawn in float32 on the CPU from `generator` and then moved, so a seed
    reproduces on any device.
    """
    std = torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE))
    if noise is None:
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32, device="cpu")
    elif noise.shape != mean.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, the posterior {tuple(mean.shape)}")
    return mean + std * noise.to(device=mean.device, dtype=mean.dtype)


class CausalVideoVAE(nn.Module):
    """CogVideoX's 3-D causal VAE (SAT `VideoAutoencodingEngine` with a `DiagonalGaussianRegularizer`).

    encode: video (b, 3, F, H, W) in [-1, 1] -> latents (b, z, 1 + (F-1)/4, H/8, W/8); decode: the reverse.
    Defaults are the released model's sizes (identical for every variant).
    """

    def __init__(
        self,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 2, 2, 4),
        num_res_blocks: int = 3,
        z_channels: int = 16,
        in_channels: int = 3,
        out_channels: int = 3,
        temporal_compress_times: int = 4,
    ):
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        time_levels = _time_levels(temporal_compress_times)
        if not ch_mult or time_levels > len(ch_mult) - 1:
            raise ValueError(
                f"ch_mult {ch_mult} has too few levels for temporal_compress_times {temporal_compress_times}"
            )
        widths = {ch * m for m in ch_mult}
        if any(c % GROUPS for c in widths):
            raise ValueError(
                f"every width ch * ch_mult must be a multiple of {GROUPS} (GroupNorm), got {sorted(widths)}"
            )
        self.z_channels = z_channels
        self.temporal_compress_times = temporal_compress_times
        self.spatial_compress = 2 ** (len(ch_mult) - 1)
        self.encoder = Encoder3D(ch, ch_mult, num_res_blocks, in_channels, z_channels, time_levels)
        self.decoder = Decoder3D(ch, ch_mult, num_res_blocks, out_channels, z_channels, time_levels)

    @classmethod
    def from_config(cls, cfg) -> CausalVideoVAE:
        """From a mapping or an object with `ch`, `ch_mult`, `num_res_blocks`, `z_channels` and optionally
        `in_channels`, `out_channels` (or SAT's `out_ch`) and `temporal_compress_times`; or from one with `encoder`
        and `decoder` halves holding those (SAT's first_stage_config params, as `cogvid.sat.yaml_import`
        records them)."""

        def get(node, key: str, default=None):
            if isinstance(node, Mapping):
                return node.get(key, default)
            return getattr(node, key, default)

        sizes = ("ch", "ch_mult", "num_res_blocks", "z_channels")
        encoder, decoder = get(cfg, "encoder"), get(cfg, "decoder")
        if get(cfg, "ch") is None and encoder is not None and decoder is not None:
            differ = [k for k in sizes if get(encoder, k) != get(decoder, k)]
            if differ:
                raise CogvidError(f"the VAE's encoder and decoder configs differ in {', '.join(differ)}")
            cfg = encoder
        kwargs = {k: get(cfg, k) for k in sizes}
        absent = [k for k, v in kwargs.items() if v is None]
        if absent:
            raise CogvidError(f"VAE config lacks {', '.join(absent)}")
        kwargs["in_channels"] = get(cfg, "in_channels", 3)
        kwargs["out_channels"] = get(cfg, "out_channels", get(cfg, "out_ch", 3))
        kwargs["temporal_compress_times"] = get(cfg, "temporal_compress_times", 4)
        return cls(**kwargs)

    @classmethod
    def from_state(cls, cfg, state, source, dtype: torch.dtype | None = None) -> CausalVideoVAE:
        """Built `from_config(cfg)`, the tensors `state` (read from the file `source`) strictly loaded, frozen, in
        `dtype` (None: as stored)."""
        from cogvid.models.state import load_vae_state

        return load_vae_state(cls.from_config(cfg), state, source, dtype).requires_grad_(False)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv_out.conv.weight.dtype

    # ---- encoding

    def encode_moments(self, video: torch.Tensor, first_frame: FirstFrame = FirstFrame.odd) -> torch.Tensor:
        """video (b, 3, F, H, W) -> [mean | logvar] (b, 2z, T, H/8, W/8), unregularized; one pass, no caching.

        `first_frame`: odd (v1.0) and always (HEAD) agree for F = 1 + 4k, the only lengths SAT encodes.
        """
        return self.encoder(video, FirstFrame(first_frame))

    def encode(
        self,
        video: torch.Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        first_frame: FirstFrame = FirstFrame.odd,
    ) -> torch.Tensor:
        """video (b, 3, F, H, W) -> unscaled latents (b, z, T, H/8, W/8): a posterior sample (as SAT),
        or the mean with `sample=False`.

        sample = mean + exp(0.5 clamp(logvar, -30, 20)) * noise. The noise is `noise` if given, else
        `torch.randn(shape, generator=generator)` drawn in float32 on the CPU and then moved, so a seed reproduces on
        any device (SAT draws `randn_like` on the VAE's device: the same numbers on a CPU run).
        """
        mean, logvar = self.encode_moments(video, first_frame).chunk(2, dim=1)
        return sample_posterior(mean, logvar, generator, noise) if sample else mean

    # ---- decoding

    def decode(self, latents: torch.Tensor, first_frame: FirstFrame = FirstFrame.odd) -> torch.Tensor:
        """Unscaled latents (b, z, T, h, w) -> video (b, 3, F, 8h, 8w) in one call (whole-clip GroupNorm).

        With the default v1.0 rule F = 4T - 3 for odd T and 4T for even T; `FirstFrame.always` gives 4T - 3 for any
        T > 1, `FirstFrame.never` 4T.
        """
        self.decoder.clear_cache()
        return self.decoder(latents, clear_cache=True, first_frame=FirstFrame(first_frame))

    def decode_chunked(
        self,
        latents: torch.Tensor,
        generation: Generation = Generation.v1_0,
        *,
        head_frame_quirk: bool = False,
        drop_first_latent: bool | None = None,
        tile: tuple[int, int] | None = None,
        tile_overlap: tuple[int, int] | None = None,
        progress: bool = False,
        ring=None,
    ) -> torch.Tensor:
        """Unscaled latents (b, z, T, h, w) -> video, decoded chunk by chunk as SAT's sampling does.

        Each chunk is one decoder call with its own GroupNorm statistics; the causal convs carry their last input
        frames into the next chunk, and the last chunk reads the carry and then clears it.
        v1.0: chunks [0:3], [3:5], ... (T = 13 -> 49 frames). 1.5: `drop_first_latent` (default: True for 1.5, as
        HEAD's `decode_first_stage` does) removes latent 0, then HEAD's chunks; 22 latents -> 21 -> 81 frames, or 84
        with `head_frame_quirk` (see `decode_chunks`).
        `tile` (latent h, w; off by default, which is SAT): decode overlapping spatial tiles one after another to save
        memory and blend them linearly over `tile_overlap` latents (default a sixth of the tile). Not SAT-exact:
        GroupNorm statistics become per tile.
        `progress`: a progress bar over the decoder calls.
        `ring`: a `cogvid.parallel.vae_decode.ChunkRing`: the chunks spread over its ranks, each of which returns the
        whole video (exact to one process).
        """
        generation = Generation(generation)
        if drop_first_latent is None:
            drop_first_latent = generation is Generation.v1_5
        if drop_first_latent:
            latents = latents[:, :, 1:]
        chunks = decode_chunks(generation, latents.shape[2], head_frame_quirk)

        def decode(z: torch.Tensor, bar) -> torch.Tensor:
            if ring is not None:
                return ring.decode(self.decoder, z, chunks, bar)
            return self._decode_in_chunks(z, chunks, bar)

        if tile is None:
            bar = tqdm(total=len(chunks), desc="decoding", unit="chunk", leave=False, disable=not progress)
            with bar:
                return decode(latents, bar)
        overlap = tile_overlap if tile_overlap is not None else (tile[0] // 6, tile[1] // 6)
        n_tiles = len(_tile_starts(latents.shape[-2], tile[0], overlap[0])) * len(
            _tile_starts(latents.shape[-1], tile[1], overlap[1])
        )
        bar = tqdm(total=n_tiles * len(chunks), desc="decoding", unit="chunk", leave=False, disable=not progress)
        with bar:
            return decode_tiled(latents, lambda z: decode(z, bar), tile, overlap, self.spatial_compress)

    def decode_video(
        self,
        latents: torch.Tensor,
        generation: Generation,
        head_frame_quirk: bool = False,
        tile: tuple[int, int] | None = None,
        progress: bool = False,
        ring=None,
    ) -> torch.Tensor:
        """One video's unscaled latents (1, z, T, h, w), on any device in any dtype -> the video (3, F, H, W), float32
        on the CPU: `decode_chunked` on this VAE's device, in its dtype."""
        weight = self.decoder.conv_out.conv.weight
        z = latents.to(weight.device, weight.dtype)
        video = self.decode_chunked(
            z, generation, head_frame_quirk=head_frame_quirk, tile=tile, progress=progress, ring=ring
        )
        return video[0].float().cpu()

    def _decode_in_chunks(self, latents: torch.Tensor, chunks: list[tuple[int, int, FirstFrame]], bar=None):
        self.decoder.clear_cache()
        videos = []
        try:
            for i, (start, end, rule) in enumerate(chunks):
                last = i == len(chunks) - 1
                videos.append(self.decoder(latents[:, :, start:end].contiguous(), clear_cache=last, first_frame=rule))
                if bar is not None:
                    bar.update()
        finally:
            self.decoder.clear_cache()  # also after an error, so no later call reads a stale carry
        return torch.cat(videos, dim=2)


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of `tile` latents overlapping by `overlap`; the last one reaches the end."""
    if tile >= size:
        return [0]
    return list(range(0, size - overlap, tile - overlap))


def _blend(before: torch.Tensor, after: torch.Tensor, overlap: int, dim: int) -> torch.Tensor:
    """Join two tiles along `dim` whose last / first `overlap` pixels show the same place: a linear cross-fade."""
    if overlap == 0:
        return torch.cat([before, after], dim=dim)
    shape = [1] * after.dim()
    shape[dim] = overlap
    ramp = (torch.arange(overlap, device=after.device, dtype=torch.float32) / overlap).to(after.dtype).view(shape)
    tail, head = before.narrow(dim, before.shape[dim] - overlap, overlap), after.narrow(dim, 0, overlap)
    mixed = tail * (1 - ramp) + head * ramp
    rest = after.narrow(dim, overlap, after.shape[dim] - overlap)
    return torch.cat([before.narrow(dim, 0, before.shape[dim] - overlap), mixed, rest], dim=dim)


def decode_tiled(latents: torch.Tensor, decode, tile: tuple[int, int], overlap: tuple[int, int], scale: int):
    """`decode` (latents (b, z, T, h, w) -> video (b, c, F, scale h, scale w)) over overlapping spatial tiles."""
    (tile_h, tile_w), (over_h, over_w) = tile, overlap
    if not (0 <= over_h < tile_h and 0 <= over_w < tile_w):
        raise ValueError(f"tile_overlap {overlap} must be >= 0 and smaller than the tile {tile}")
    h, w = latents.shape[-2:]
    rows = []
    for top in _tile_starts(h, tile_h, over_h):
        row = None
        for left in _tile_starts(w, tile_w, over_w):
            part = decode(latents[..., top : top + tile_h, left : left + tile_w])
            row = part if row is None else _blend(row, part, scale * over_w, dim=-1)
        rows.append(row)
    video = rows[0]
    for row in rows[1:]:
        video = _blend(video, row, scale * over_h, dim=-2)
    return video
