"""Validation videos every `train.validation.every` steps: fixed prompts and seeds, sampled with `sampler.*`
through `cogvid.inference.pipeline.VideoPipeline`, written as MP4 files and as TensorBoard videos (animated GIF
image summaries).

Every rank samples every video in lockstep (a ZeRO-3 model gathers its parameters collectively); rank 0 writes.
The pipeline is built from the module's diffusion model and its VAE and T5; when training from cached latents
(no VAE or T5 in the module) they are loaded for the validation only and dropped after it.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from cogvid.inference.outputs import slug
from cogvid.sat.loading import load_frozen_parts
from cogvid.utils.media import read_image, to_uint8_frames, write_mp4
from cogvid.utils.runtime import PRECISION_DTYPES

log = logging.getLogger(__name__)

VALIDATION_DIR = "validation"


def add_tensorboard_video(writer, tag: str, frames: np.ndarray, step: int, fps: int) -> None:
    """(f, h, w, 3) uint8 as an animated GIF image summary (what SummaryWriter.add_video writes, without moviepy)."""
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    images = [Image.fromarray(f) for f in frames]
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / max(fps, 1)), loop=0
    )
    f, h, w, c = frames.shape
    image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=buffer.getvalue())
    writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), global_step=step)


class ValidationVideos(Callback):
    """`train.validation` as checked by the plan (`cogvid.training.plan`); `image_to_video`: each prompt samples from
    its image."""

    def __init__(self, cfg, out_dir: Path, image_to_video: bool):
        v = cfg.train.validation
        self.cfg, self.out_dir, self.image_to_video = cfg, Path(out_dir), image_to_video
        self.every, self.prompts, self.seeds = int(v.every), list(v.prompts), [int(s) for s in v.seeds]
        self.images = list(v.images)
        self._last = -1
        self.written: list[Path] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self._last = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every > 0 and step != self._last and step % self.every == 0:
            self._last = step
            self.run(trainer, pl_module, step)

    @torch.no_grad()
    def run(self, trainer: L.Trainer, pl_module, step: int) -> list[Path]:
        from cogvid.inference.pipeline import VideoPipeline
        from cogvid.inference.plan import video_settings

        frozen = pl_module.frozen or load_frozen_parts(pl_module.cfg.model, pl_module.frozen_dtype, pl_module.device)
        mixed = pl_module.precision_name != "32"  # Lightning's precision: sample under the autocast it trains in
        autocast_dtype = PRECISION_DTYPES[pl_module.precision_name] if mixed else None
        model = pl_module.diffusion_model
        pipeline = VideoPipeline(
            pl_module.cfg.model,
            video_settings(pl_module.cfg),
            model,
            frozen.vae,
            frozen.text_encoder,
            pl_module.device,
            autocast_dtype or torch.float32,
            pl_module.frozen_dtype,
        )
        fps = int(self.cfg.infer.fps or self.cfg.data.fps)
        folder = self.out_dir / VALIDATION_DIR / f"step-{step:08d}"
        was_training = model.backbone.training
        model.backbone.eval()
        written = []
        try:
            for i, prompt in enumerate(self.prompts):
                image = read_image(self.images[i]) if self.image_to_video else None
                for seed in self.seeds:
                    with torch.autocast(
                        pl_module.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
                    ):
                        result = pipeline.generate(prompt, seed, image=image)
                    if trainer.is_global_zero:
                        frames = to_uint8_frames(result.video)
                        path = write_mp4(folder / f"{i:02d}_{slug(prompt)}_seed{seed}.mp4", frames, fps)
                        written.append(path)
                        writer = getattr(trainer.logger, "experiment", None) if trainer.logger else None
                        if writer is not None:
                            add_tensorboard_video(writer, f"validation/{i:02d}_seed{seed}", frames, step, fps)
            if trainer.is_global_zero:
                (folder / "prompts.txt").write_text("".join(p + "\n" for p in self.prompts))
                log.info("step %d: %d validation videos in %s", step, len(written), folder)
        finally:
            model.backbone.train(was_training)
        self.written.extend(written)
        return written
