"""The shape of a sampled video: pixel frames and size, checked per variant, and the latent grid they map to.

A video of F pixel frames has T = (F - 1) / 4 + 1 latent frames (the causal VAE keeps frame 0 apart). Both code
generations decode an odd T (v1.0 chunks [0:3], [3:5], ...; 1.5 pads T to even for its temporal patches and drops
that padding latent at decode), so F = 8k + 1: 49 and 81 as released. Sizes are multiples of the VAE's spatial
factor times the DiT's patch: 8 x 2 = 16 for every released variant (4 levels of `model.vae.ch_mult`), 4 x 2 = 8
for the shapes model's 3-level VAE. The largest F, H and W are the model's positional limits (model.num_frames,
latent_height and latent_width).
"""

from __future__ import annotations

from dataclasses import dataclass

from cogvid.config.schema import Generation
from cogvid.utils.errors import CogvidError

FRAME_STEP = 8  # F = 8k + 1 (see the module docstring)


@dataclass(frozen=True)
class VideoShape:
    """Pixel frames and size of one video, and the (t, c, h, w) latent the sampler draws for it."""

    num_frames: int
    height: int
    width: int
    latent_frames: int  # including the 1.5 family's padding latent
    latent_channels: int
    vae_spatial: int = 8  # pixels per latent, each way

    @property
    def latent(self) -> tuple[int, int, int, int]:
        s = self.vae_spatial
        return (self.latent_frames, self.latent_channels, self.height // s, self.width // s)


def vae_spatial(model) -> int:
    """Pixels per latent, each way, of a `model` config: the VAE halves the size at every level of `vae.ch_mult` but
    its last (8 for the released 4-level VAE)."""
    return 2 ** (len(model.vae.ch_mult) - 1)


def size_multiple(model) -> int:
    """What a video's height and width must be a multiple of: one DiT patch of latents, in pixels (16 as released)."""
    return vae_spatial(model) * model.patch_size


def _nearest(value: int, low: int, high: int, step: int, base: int) -> int:
    """The value of the form base + step * k in [low, high] nearest to `value` (ties go up)."""
    k = round((value - base) / step + 1e-9)
    return min(max(base + step * k, low), high)


def check_num_frames(model, num_frames: int) -> int:
    """`num_frames` if this model can sample it, else one line naming the nearest valid value."""
    limit = model.num_frames
    if num_frames < 1 or (num_frames - 1) % FRAME_STEP or num_frames > limit:
        nearest = _nearest(num_frames, 1, limit - (limit - 1) % FRAME_STEP, FRAME_STEP, 1)
        why = f"at most {limit} (the model's positional tables)" if num_frames > limit else "8k+1"
        raise CogvidError(
            f"infer.num_frames={num_frames}: {model.name} samples 8k+1 frames up to {limit} ({why}); "
            f"the nearest valid value is {nearest}"
        )
    return num_frames


def check_size(model, height: int, width: int) -> tuple[int, int]:
    """(height, width) if both are multiples of `size_multiple` within the model's latent grid, else one line."""
    spatial, step = vae_spatial(model), size_multiple(model)
    limits = {"height": model.latent_height * spatial, "width": model.latent_width * spatial}
    for name, value in (("height", height), ("width", width)):
        if value < step or value % step or value > limits[name]:
            nearest = _nearest(value, step, limits[name] - limits[name] % step, step, 0)
            raise CogvidError(
                f"infer.{name}={value}: {model.name} samples multiples of {step} up to {limits[name]}; "
                f"the nearest valid value is {nearest}"
            )
    return height, width


def video_shape(model, num_frames: int | None, height: int | None, width: int | None) -> VideoShape:
    """The checked shape; None takes the variant's default (model.num_frames, default_height/width)."""
    frames = check_num_frames(model, model.num_frames if num_frames is None else num_frames)
    h, w = check_size(
        model,
        model.default_height if height is None else height,
        model.default_width if width is None else width,
    )
    t = (frames - 1) // model.time_compressed_rate + 1
    t += t % model.patch_size_t  # 1.5: an even latent count for the temporal patches (one leading extra latent)
    return VideoShape(frames, h, w, t, model.out_channels, vae_spatial(model))


def size_from_image_aspect(model, image_height: int, image_width: int) -> tuple[int, int]:
    """1.5-I2V (SAT HEAD `sample_video.py`): the short side is the variant's (768), the long side keeps the image's
    aspect, rounded to the nearest multiple of 16 (ties up; `size_multiple`)."""
    short_side, step = min(model.default_height, model.default_width), size_multiple(model)

    def rounded(x: float) -> int:
        return int(x / step + 0.5) * step

    if image_height < image_width:
        return short_side, rounded(image_width / image_height * short_side)
    return rounded(image_height / image_width * short_side), short_side


def job_video_shape(model, infer, image_size: tuple[int, int] | None = None) -> VideoShape:
    """The checked shape of one job from infer.num_frames / height / width (`infer`: the infer group, or anything
    holding those three, such as a pipeline's `VideoSettings`): 1.5-I2V (a 1.5 model given an image,
    whose (height, width) is `image_size`) with neither height nor width set sizes itself from the image's aspect
    (`size_from_image_aspect`)."""
    height, width = infer.height, infer.width
    derive = Generation(model.generation) is Generation.v1_5 and image_size is not None
    if derive and height is None and width is None:
        height, width = size_from_image_aspect(model, *image_size)
    return video_shape(model, infer.num_frames, height, width)
