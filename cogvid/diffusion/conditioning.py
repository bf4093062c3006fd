"""What the DiT is conditioned on besides the prompt: the unconditional context of classifier-free guidance, and the
image-to-video conditioning (the image latent concatenated on channels, and the 1.5-I2V `ofs`).

Sampling (`cogvid.inference.pipeline`) and training (`cogvid.training.module`) both build them here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cogvid.config.schema import Uncond
from cogvid.diffusion.step_cache import StepCache
from cogvid.utils.errors import CogvidError

# The ofs SAT HEAD's sample_video.py gives the 1.5-I2V DiT (its ofs embedding's input). SAT's 1.5-I2V training
# passes none; here training passes the same value, so the ofs embedding sees at training what it sees at sampling.
I2V_OFS = 2.0

# encode(prompts) -> (len(prompts), text_length, text_hidden_size): T5Conditioner.encode
EncodeText = Callable[[list[str]], torch.Tensor]
# network(x_t, timesteps, context) -> v: the DiT with the I2V inputs attached; all (b, ...) batches
Network = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def unconditional_context(
    uncond: Uncond | str,
    cond: torch.Tensor,
    encode: EncodeText | None = None,
    negative_prompts: Sequence[str] | None = None,
) -> torch.Tensor:
    """The context of the unconditional pass, shaped like `cond` (b, text_length, d).

    sampler.uncond=zeros: all zeros, as the original (SAT's sample_video.py zeroes the uncond crossattn).
    sampler.uncond=negative_prompt: the T5 encoding of `negative_prompts` ("" for each sample when None), as diffusers
    does; this needs `encode`.
    """
    if Uncond(uncond) is Uncond.zeros:
        return torch.zeros_like(cond)
    if encode is None:
        raise CogvidError(
            "sampler.uncond=negative_prompt needs the encoded negative prompt: pass it as `uncond`, or a text encoder"
        )
    prompts = list(negative_prompts) if negative_prompts is not None else [""] * cond.shape[0]
    return encode(prompts)


@dataclass(frozen=True)
class ImageConditioning:
    """The I2V inputs of the DiT next to the noisy latent."""

    concat: torch.Tensor  # (b, t, c, h, w): the image latent in frame 0, zeros after; concatenated on channels
    ofs: torch.Tensor | None  # (b,) float32, I2V_OFS for every sample; None for a model without an ofs embedding


def image_conditioning(image_latent: torch.Tensor, latent_frames: int, model) -> ImageConditioning:
    """The I2V conditioning of a `model` config from the image latent (b, 1, c, h, w), already scaled as wanted.

    As SAT: the conditioning latent is as long as the noisy latent (`latent_frames`), the image's latent first and
    zeros after; it is concatenated, never noised.
    """
    b = image_latent.shape[0]
    padding = image_latent.new_zeros((b, latent_frames - 1, *image_latent.shape[2:]))
    concat = torch.cat([image_latent, padding], dim=1)
    ofs = torch.full((b,), I2V_OFS, device=image_latent.device) if model.ofs_embed_dim else None
    return ImageConditioning(concat=concat, ofs=ofs)


def image_network(
    backbone, concat: torch.Tensor | None, ofs: torch.Tensor | None, step_cache: StepCache | None = None, shard=None
) -> Network:
    """The DiT with the I2V inputs: `concat` (b, t, c, h, w) joined on channels and `ofs` given at every call, a
    sampling run's `step_cache` (None: every block runs) and this rank's `shard` of a sequence-parallel group
    (`cogvid.parallel.sequence.SequenceShard`; None: the whole video here).

    Both are repeated when x_t is a multiple of their batch (sampling's guidance batch [uncond ; cond] is twice it;
    in training the batches match); an ofs of one value is left to the DiT to broadcast.
    """

    def network(x_t: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        ofs_t = ofs
        if concat is not None:
            repeat = x_t.shape[0] // concat.shape[0]
            x_t = torch.cat([x_t, concat.repeat(repeat, 1, 1, 1, 1).to(x_t.dtype)], dim=2)
        if ofs_t is not None and ofs_t.shape[0] > 1:
            ofs_t = ofs_t.repeat(x_t.shape[0] // ofs_t.shape[0])
        return backbone(x_t, timesteps, context, ofs=ofs_t, step_cache=step_cache, shard=shard)

    return network
