"""Prompt (and image) to video in SAT's order (`sample_video.py`): T5, the I2V image latent, sampling, then the
chunked VAE decode.

`VideoPipeline.from_plan(load, settings)` loads the weights a `LoadPlan` names (`cogvid.inference.plan.plan_loading`:
the DiT at `model.ckpt`, the VAE at `model.vae_ckpt`, T5 at `model.text_encoder.path`, on the planned device in the
planned dtypes) and makes videos with the resolved `VideoSettings` (`cogvid.inference.plan.video_settings`: the sampler
and the infer values); the pipeline never reads the composed config. `VideoPipeline.from_config(cfg)` plans both and
loads in one call. `generate(...)` returns one video in [-1, 1] with its unscaled latents and timings.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cogvid.config.schema import Generation, ImageLatentScaling
from cogvid.diffusion.conditioning import ImageConditioning, image_conditioning, unconditional_context
from cogvid.diffusion.model import DiffusionModel
from cogvid.diffusion.sampling import sample_latents, start_step
from cogvid.inference import memory
from cogvid.inference.video_shape import VideoShape, job_video_shape
from cogvid.models.layout import to_dit_layout, to_vae_layout
from cogvid.models.t5 import T5Conditioner
from cogvid.models.vae import CausalVideoVAE
from cogvid.sat.loading import read_weight_files
from cogvid.training.data import resize_cover_center_crop
from cogvid.utils.errors import CogvidError
from cogvid.utils.runtime import peak_memory_gb

if TYPE_CHECKING:
    from cogvid.inference.plan import VideoSettings

log = logging.getLogger(__name__)


@dataclass
class GeneratedVideo:
    video: torch.Tensor  # (3, F, H, W) float32 in [-1, 1] on the CPU
    latents: torch.Tensor  # unscaled (1, c, t, h, w), as SAT's --only-save-latents writes them
    shape: VideoShape
    seed: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds: text, sampling, decoding; peak_memory_gb


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class LoadedParts:
    """What a pipeline and its `with_settings` copies share: the weights on the device, and the text contexts of every
    prompt encoded so far (text -> (1, text_length, d)), so T5 can be freed while the DiT samples."""

    model: DiffusionModel
    vae: CausalVideoVAE
    text_encoder: T5Conditioner | None  # None: freed (or not loaded yet); loaded again if a new text comes
    contexts: dict[str, torch.Tensor] = field(default_factory=dict)


class VideoPipeline:
    """The diffusion model, T5 and the VAE on one device, ready to turn prompts into videos.

    model_cfg: the composed `model` group the weights were built from; settings: the resolved `VideoSettings` (sampler
    and infer values) the videos are made with; dtype: what the DiT computes in (T5 is loaded in it too); vae_dtype:
    the VAE's. text_encoder None: T5 is loaded from model_cfg when a text is first encoded.
    """

    def __init__(
        self,
        model_cfg,
        settings: VideoSettings,
        model: DiffusionModel,
        vae: CausalVideoVAE,
        text_encoder: T5Conditioner | None,
        device: torch.device,
        dtype: torch.dtype,
        vae_dtype: torch.dtype,
        parts: LoadedParts | None = None,
    ):
        self.model_cfg, self.settings = model_cfg, settings
        self.parts = parts or LoadedParts(model, vae, text_encoder)
        self.device, self.dtype, self.vae_dtype = device, dtype, vae_dtype
        # how this variant's latents decode (`CausalVideoVAE.decode_chunked`)
        self.generation, self.head_frame_quirk = Generation(model_cfg.generation), settings.head_frame_quirk
        self.shard = None  # a SequenceShard: this rank makes each video with the others of its group
        self.split = None  # a GuidanceSplit: this rank runs one of the two guidance passes
        self.ring = None  # a ChunkRing: this rank decodes its share of each video's chunks

    @property
    def model(self) -> DiffusionModel:
        return self.parts.model

    @property
    def vae(self) -> CausalVideoVAE:
        return self.parts.vae

    @property
    def text_encoder(self) -> T5Conditioner | None:
        """T5 while it is loaded (None once freed); setting another encoder forgets the texts encoded so far."""
        return self.parts.text_encoder

    @text_encoder.setter
    def text_encoder(self, encoder) -> None:
        self.parts.text_encoder = encoder
        self.parts.contexts.clear()

    @classmethod
    def from_config(cls, cfg, prompts: list[str] | None = None) -> VideoPipeline:
        """Plan the weights of a composed config (`plan_loading`: values, paths, device, dtypes) and its video settings
        (`video_settings`), and load them."""
        from cogvid.inference.plan import plan_loading, video_settings

        return cls.from_plan(plan_loading(cfg), video_settings(cfg), prompts)

    @classmethod
    def from_plan(cls, load, settings: VideoSettings, prompts: list[str] | None = None) -> VideoPipeline:
        """Load what a `LoadPlan` names; `settings`: the sampler and infer values the videos are made with.
        The DiT and the VAE are read into CPU memory first (a damaged file is reported before T5 loads). With
        `prompts` (every text the run will encode), T5 then encodes them on the device and is freed before the DiT
        and the VAE move there, so T5 never shares a GPU with them; without, T5 stays loaded for texts that come
        later (an interactive run)."""
        device, dtype, vae_dtype = load.device, load.dtype, load.vae_dtype
        files = read_weight_files(load.model)
        model = DiffusionModel.from_weights(load.model, files.dit, files.adapters)
        vae = CausalVideoVAE.from_state(load.model.vae, files.vae, load.model.vae_ckpt, vae_dtype)
        del files
        # SAT casts T5 to the DiT's dtype
        text_encoder = T5Conditioner.from_model_config(load.model, dtype=dtype, device=device)
        contexts = {}
        if prompts is not None:
            start = time.perf_counter()
            contexts = {text: text_encoder.encode([text]) for text in dict.fromkeys(prompts)}
            log.info("T5 encoded %d texts in %.2f s and is freed", len(contexts), time.perf_counter() - start)
            text_encoder = None
            _release(device)
        model.backbone.to(device=device, dtype=dtype)
        vae.to(device)
        if load.compile:
            compile_blocks(model.backbone)
        log.info("loaded %s on %s (DiT and T5 %s, VAE %s)", load.model.name, device, dtype, vae_dtype)
        parts = LoadedParts(model, vae, text_encoder, contexts)
        return cls(load.model, settings, model, vae, text_encoder, device, dtype, vae_dtype, parts=parts)

    def with_settings(self, settings: VideoSettings) -> VideoPipeline:
        """This pipeline's loaded weights under other `VideoSettings` (another sampler, other infer values) of a config
        with the same model, mode, dtypes and device: what a sweep's next job uses instead of loading again."""
        parts = self.parts
        return VideoPipeline(self.model_cfg, settings, None, None, None, self.device, self.dtype, self.vae_dtype, parts)

    # --- text ---------------------------------------------------------------------------------------------------
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), text_length, d): each text encoded alone (as SAT encodes one prompt), each once per process."""
        parts = self.parts
        for text in dict.fromkeys(texts):
            if text not in parts.contexts:
                if parts.text_encoder is None:
                    log.info("loading T5 again for a new text")
                    parts.text_encoder = T5Conditioner.from_model_config(
                        self.model_cfg, dtype=self.dtype, device=self.device
                    )
                parts.contexts[text] = parts.text_encoder.encode([text])
        return torch.cat([parts.contexts[text] for text in texts])

    def free_text_encoder(self) -> None:
        """Let T5 go (the contexts stay); a text not yet encoded loads it again."""
        if self.parts.text_encoder is not None:
            self.parts.text_encoder = None
            _release(self.device)

    # --- the parts --------------------------------------------------------------------------------------------
    def shape_for(self, image_size: tuple[int, int] | None = None) -> VideoShape:
        """The checked shape from infer.num_frames/height/width; 1.5-I2V sizes itself from the image's aspect."""
        return job_video_shape(self.model_cfg, self.settings, image_size)

    def image_conditioning(self, image, shape: VideoShape, generator: torch.Generator) -> ImageConditioning:
        """The I2V conditioning of a PIL image: concat (1, t, c, h, w), the image's latent in frame 0 and zeros
        after (as SAT), and the 1.5-I2V ofs."""
        m = self.model_cfg
        v1_5 = Generation(m.generation) is Generation.v1_5
        pixels = _fit_image(image, shape.height, shape.width, crop=not v1_5)  # (1, 3, 1, H, W) in [-1, 1]
        sample = self.settings.image_posterior_sample
        z = self.vae.encode(pixels.to(self.device, self.vae_dtype), sample=sample, generator=generator).float()
        scaling = self.settings.image_latent_scaling
        if scaling is ImageLatentScaling.auto:
            scaling = ImageLatentScaling.unscaled if v1_5 else ImageLatentScaling.scaled
        if scaling is ImageLatentScaling.scaled:
            z = z * m.scale_factor
        return image_conditioning(to_dit_layout(z), shape.latent_frames, m)  # z: (1, c, 1, h, w)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """A source clip (3, F, H, W) in [-1, 1] -> its scaled latent (1, t, c, h, w), float32: the posterior mean
        (no draw, so the sampling noise of every seed stays SAT's), times model.scale_factor as the DiT sees latents.
        The 1.5 family leads with a copy of latent 0, the padding latent its decode drops (as training pads)."""
        m = self.model_cfg
        pixels = video[None].to(self.device, self.vae_dtype)  # (1, 3, F, H, W)
        z = to_dit_layout(self.vae.encode(pixels, sample=False).float() * m.scale_factor)  # (1, T, c, h, w)
        if z.shape[1] % m.patch_size_t:
            z = torch.cat([z[:, :1], z], dim=1)
        return z

    def decode_tile(self, shape: VideoShape | None) -> tuple[int, int] | None:
        """The decode's spatial tile from infer.vae_tile (`cogvid.inference.memory.vae_tile`), auto measured against
        the memory left beside this pipeline's loaded weights now."""
        held, limit = memory.loaded_bytes(self.model.backbone, self.vae), self.settings.memory_limit_gb
        return memory.vae_tile(
            self.settings.vae_tile,
            self.model_cfg,
            shape,
            self.vae_dtype,
            lambda: memory.room_for_decode(limit, self.device, held),
        )

    def decode(self, latents: torch.Tensor, progress: bool = False, shape: VideoShape | None = None) -> torch.Tensor:
        """Sampled latents (1, t, c, h, w), scaled -> video (3, F, H, W) in [-1, 1], chunked as SAT decodes, in the
        spatial tiles of `decode_tile(shape)`."""
        unscaled = to_vae_layout(latents) / self.model_cfg.scale_factor
        tile = self.decode_tile(shape)
        return self.vae.decode_video(unscaled, self.generation, self.head_frame_quirk, tile, progress, self.ring)

    # --- one video --------------------------------------------------------------------------------------------
    def generate(
        self,
        prompt: str,
        seed: int,
        negative_prompt: str | None = None,
        image=None,
        shape: VideoShape | None = None,
        progress: bool = False,
        source: torch.Tensor | None = None,
        strength: float = 1.0,
    ) -> GeneratedVideo:
        """One video, checked and shaped here: the image must agree with the model, the shape defaults to
        infer.num_frames/height/width (1.5-I2V sizes itself from the image) and the decode tile to infer.vae_tile.
        Then `make_video`. All randomness comes from CPU generators seeded with `seed`.

        source: video to video (SDEdit): the source clip's latent from `encode_video` (1, t, c, h, w); the walk starts
        at the step `strength` selects (`start_step`), from the clip noised with this seed's initial noise, so
        strength 1 is the text-to-video sample of the seed and strength 0 the clip's VAE round trip.
        """
        from cogvid.config.schema import is_image_to_video
        from cogvid.inference.plan import check_image_agrees

        m = self.model_cfg
        check_image_agrees(m.name, is_image_to_video(m), image, "generate")
        if source is not None and image is not None:
            raise CogvidError(f"{m.name}: video to video takes a text-to-video model and no image")
        shape = shape or self.shape_for(None if image is None else (image.height, image.width))
        return self.make_video(
            prompt, seed, shape, self.decode_tile(shape), negative_prompt, image, progress, source, strength
        )

    def make_video(
        self,
        prompt: str,
        seed: int,
        shape: VideoShape,
        tile: tuple[int, int] | None,
        negative_prompt: str | None = None,
        image=None,
        progress: bool = False,
        source: torch.Tensor | None = None,
        strength: float = 1.0,
    ) -> GeneratedVideo:
        """One video of a checked shape, decoded in `tile` (None: whole frames), deciding nothing: what
        cogvid-sample runs for each planned video (`generate` checks and shapes first). The image posterior draws
        from its own generator, so the sampling noise is SAT's for that seed."""
        m = self.model_cfg
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        timings = {}

        # 1. the prompt's context, the image latent, then the unconditional context
        start = time.perf_counter()
        cond = self.encode_texts([prompt])
        conditioning = None
        if image is not None:
            conditioning = self.image_conditioning(image, shape, torch.Generator().manual_seed(seed))
        sampler = self.settings.sampler
        uncond = unconditional_context(sampler.uncond, cond, self.encode_texts, [negative_prompt or ""])
        _sync(self.device)
        timings["text_s"] = time.perf_counter() - start

        # 2. the latents, checked finite
        start = time.perf_counter()
        latents = sample_latents(
            self.model,
            sampler,
            cond,
            uncond,
            shape=shape.latent,
            generator=torch.Generator().manual_seed(seed),
            concat=None if conditioning is None else conditioning.concat,
            ofs=None if conditioning is None else conditioning.ofs,
            progress=progress,
            start=None if source is None else (source, start_step(strength, sampler.num_steps)),
            shard=self.shard,
            split=self.split,
        )
        _sync(self.device)
        timings["sampling_s"] = time.perf_counter() - start
        if not torch.isfinite(latents).all():
            raise CogvidError(
                f"the sampled latents hold NaN or inf (an overflow in {str(self.dtype).removeprefix('torch.')}?): "
                "sample with dtype=bf16"
            )

        # 3. decoded to frames, checked finite
        start = time.perf_counter()
        unscaled = to_vae_layout(latents) / m.scale_factor  # (1, c, t, h, w)
        video = self.vae.decode_video(unscaled, self.generation, self.head_frame_quirk, tile, progress, self.ring)
        timings["decoding_s"] = time.perf_counter() - start
        if not torch.isfinite(video).all():
            raise CogvidError("the VAE decode gave NaN or inf (an overflow?): decode with vae_dtype=bf16 or fp32")
        timings["peak_memory_gb"] = peak_memory_gb(self.device)
        return GeneratedVideo(video, unscaled.float().cpu(), shape, seed, timings)


def _release(device: torch.device) -> None:
    """Return the memory of what was just let go: collect it, and empty CUDA's cache so other parts can use it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def compile_blocks(backbone) -> None:
    """compile=true: torch.compile every transformer block in place. The blocks share their code and shapes, so one
    compilation serves them all; the step cache and the sampling loop stay eager. Inductor caches what it compiles
    on disk (TORCHINDUCTOR_CACHE_DIR, here ~/.cache/cogvid/inductor unless set), so a later run skips most of it."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "cogvid" / "inductor"))
    for layer in backbone.transformer.layers:
        layer.compile(dynamic=False)


def _fit_image(image, height: int, width: int, crop: bool) -> torch.Tensor:
    """PIL image -> (1, 3, 1, H, W) in [-1, 1].

    crop (v1.0): SAT's resize_for_rectangle_crop: a bicubic resize that covers H x W keeping the aspect, then the
    centre. Otherwise (1.5): a resize to exactly H x W (Lanczos), as SAT HEAD does.
    """
    from PIL import Image

    if crop:
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)[None]  # (1, 3, h, w)
        pixels = resize_cover_center_crop(pixels, height, width)[0] / 255.0
    else:
        resized = image.resize((width, height), Image.LANCZOS)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
    return (pixels[None, :, None] * 2.0 - 1.0).contiguous()


# The pipeline this process loaded last, under its LoadPlan's weights key.
_last_loaded: tuple[str, VideoPipeline] | None = None


def held_bytes(weights_key: str) -> int:
    """The bytes of the weights this process holds under `weights_key` (a sweep's earlier job), else 0."""
    if _last_loaded is None or _last_loaded[0] != weights_key:
        return 0
    held = _last_loaded[1]
    return memory.loaded_bytes(held.model.backbone, held.vae)


def load_pipeline(load, settings: VideoSettings, prompts: list[str] | None = None) -> VideoPipeline:
    """The pipeline of a `LoadPlan` (`cogvid.inference.plan.plan_loading`) for the `VideoSettings` of a job (its
    sampler and infer values), reusing the weights this process loaded last when their key is the same: the jobs of a
    `cogvid-sample -m` sweep over sampler or infer settings run in one process and load the DiT, VAE and T5 once.
    Other weights replace the kept ones (one set is held at a time).

    prompts: every text the job encodes; they are encoded first and T5 is freed (see `from_plan`)."""
    global _last_loaded
    if _last_loaded is not None and _last_loaded[0] == load.weights_key:
        log.info("%s: the weights loaded for the previous job are reused", load.model.name)
        pipeline = _last_loaded[1].with_settings(settings)
        if prompts is not None:
            pipeline.encode_texts(list(prompts))
            pipeline.free_text_encoder()
        return pipeline
    _last_loaded = None  # let the previous weights go before others load
    pipeline = VideoPipeline.from_plan(load, settings, prompts)
    _last_loaded = (load.weights_key, pipeline)
    return pipeline
