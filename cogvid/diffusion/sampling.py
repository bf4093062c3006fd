"""The sampling loop: text contexts (and the I2V conditioning) to latents with the configured solver and guidance.

What SAT's `SATVideoDiffusionEngine.sample` and its sampler's `__call__` (`sgm/modules/diffusionmodules/sampling.py`)
do together: the initial noise, the discretization, classifier-free guidance around the denoiser, the solver steps.
Every random draw comes from one CPU generator in SAT's order, so a seed gives SAT's latents on any device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from cogvid.config.schema import Solver, ZeroSnrRescale
from cogvid.diffusion.conditioning import Network, image_network, unconditional_context
from cogvid.diffusion.guidance import guidance_scales, guided
from cogvid.diffusion.model import DiffusionModel
from cogvid.diffusion.schedules import SamplingSchedule, sampling_schedule
from cogvid.diffusion.solvers import SOLVERS


@dataclass(frozen=True)
class SamplingPlan:
    """What one run walks, fixed before its first step."""

    schedule: SamplingSchedule  # sqrt(alpha_bar) per step and the DDPM timesteps the network is told
    scales: list[float | None]  # the guidance scale of every step; None: one conditional pass
    solver: Callable  # one of SOLVERS: solver(denoise, x, alphas, noise, steps) -> x0


def sampling_plan(sampler, shift_scale: float) -> SamplingPlan:
    """The plan of a `sampler` config for a model with this SNR shift."""
    rescale = ZeroSnrRescale(sampler.zero_snr_rescale).value
    schedule = sampling_schedule(sampler.num_steps, shift_scale, rescale=rescale)
    return SamplingPlan(schedule, guidance_scales(sampler, schedule.timesteps), SOLVERS[Solver(sampler.solver).value])


def initial_noise(shape: tuple[int, ...], batch: int, generator: torch.Generator | None) -> torch.Tensor:
    """The starting latent, standard normal, float32 on the CPU: one draw of the whole (b, t, c, h, w) shape, the
    first draw of a run as in SAT. shape: (t, c, h, w) (batch prepended) or (b, t, c, h, w)."""
    shape = tuple(shape) if len(shape) == 5 else (batch, *shape)
    return torch.randn(shape, generator=generator)


def guided_denoiser(
    model: DiffusionModel,
    plan: SamplingPlan,
    network: Network,
    alphas: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
):
    """denoise(x_t, i) -> the guided x0 estimate (float32) at step i, the solvers' contract.

    alphas: the plan's sqrt(alpha_bar) (n + 1,) on the contexts' device.
    """

    def denoise(x_t: torch.Tensor, i: int) -> torch.Tensor:
        t = int(plan.schedule.timesteps[i])

        def denoise_batch(xb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            n = xb.shape[0]
            a = alphas[i].expand(n)
            timesteps = torch.full((n,), float(t), device=cond.device)
            return model.denoiser(lambda xx, tt: network(xx, tt, context), xb, a, timesteps)

        return guided(denoise_batch, x_t, cond, uncond, plan.scales[i]).float()

    return denoise


@torch.no_grad()
def sample_latents(
    model: DiffusionModel,
    sampler,
    cond: torch.Tensor,
    uncond: torch.Tensor | None = None,
    shape: tuple[int, ...] | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    concat: torch.Tensor | None = None,
    ofs: float | torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample latents (b, t, 16, h, w) in float32 with the `sampler` config's solver and guidance.

    cond / uncond: (b, n_txt, d_txt) text contexts; uncond None is decided by `unconditional_context` (zeros, as
    sampler.uncond=zeros; sampler.uncond=negative_prompt needs the encoded negative prompt here).
    shape: (t, c, h, w) or (b, t, c, h, w), used when `noise` (the initial latent) is not given.
    generator: a CPU torch.Generator; the initial noise and every solver draw come from it, on the CPU, in
    SAT's order, so a seed gives SAT's latents on any device (None: torch's default CPU generator).
    concat, ofs: the I2V conditioning (`cogvid.diffusion.conditioning.image_conditioning`); concat (b, t, 16, h, w)
    is concatenated on channels at every call, never noised.
    """
    device = model.device
    if noise is None:
        if shape is None:
            raise ValueError("sample_latents needs `shape` or `noise`")
        noise = initial_noise(shape, cond.shape[0], generator)
    x = noise.float().to(device)
    cond = cond.to(device)
    uncond = (uncond if uncond is not None else unconditional_context(sampler.uncond, cond)).to(device)
    if concat is not None:
        concat = concat.to(device)
    if ofs is not None:
        ofs = torch.as_tensor(ofs, dtype=torch.float32, device=device).reshape(-1)

    plan = sampling_plan(sampler, model.cfg.shift_scale)
    alphas = plan.schedule.alphas.to(device)
    denoise = guided_denoiser(model, plan, image_network(model.backbone, concat, ofs), alphas, cond, uncond)

    def draw() -> torch.Tensor:
        return torch.randn(x.shape, generator=generator).to(device)

    def steps(n: int):
        return tqdm(range(n), desc="denoising", leave=False) if progress else range(n)

    return plan.solver(denoise, x, alphas, draw, steps=steps)
