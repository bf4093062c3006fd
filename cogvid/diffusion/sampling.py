"""The sampling loop: text contexts (and the I2V conditioning) to latents with the configured solver and guidance.

What SAT's `SATVideoDiffusionEngine.sample` and its sampler's `__call__` (`sgm/modules/diffusionmodules/sampling.py`)
do together: the initial noise, the discretization, classifier-free guidance around the denoiser, the solver steps.
Every random draw comes from one CPU generator in SAT's order, so a seed gives SAT's latents on any device.
"""

from __future__ import annotations

import logging
import math
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
from cogvid.diffusion.step_cache import StepCache

log = logging.getLogger(__name__)


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


def start_step(strength: float, num_steps: int) -> int:
    """The step an SDEdit run starts at: k = round((1 - strength) * num_steps), halves rounded up.

    strength 1 -> 0 (the whole walk from pure noise), 0 -> num_steps (no step: the clean latent comes back).
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength {strength} is not in [0, 1]")
    return min(max(math.floor((1.0 - strength) * num_steps + 0.5), 0), num_steps)


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
    split=None,
):
    """denoise(x_t, i) -> the guided x0 estimate (float32) at step i, the solvers' contract.

    alphas: the plan's sqrt(alpha_bar) (n + 1,) on the contexts' device; split: a GuidanceSplit (CFG parallelism).
    """

    def denoise(x_t: torch.Tensor, i: int) -> torch.Tensor:
        t = int(plan.schedule.timesteps[i])

        def denoise_batch(xb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            n = xb.shape[0]
            a = alphas[i].expand(n)
            timesteps = torch.full((n,), float(t), device=cond.device)
            return model.denoiser(lambda xx, tt: network(xx, tt, context), xb, a, timesteps)

        return guided(denoise_batch, x_t, cond, uncond, plan.scales[i], split).float()

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
    start: tuple[torch.Tensor, int] | None = None,
    shard=None,
    split=None,
) -> torch.Tensor:
    """Sample latents (b, t, 16, h, w) in float32 with the `sampler` config's solver and guidance.

    cond / uncond: (b, n_txt, d_txt) text contexts; uncond None is decided by `unconditional_context` (zeros, as
    sampler.uncond=zeros; sampler.uncond=negative_prompt needs the encoded negative prompt here).
    shape: (t, c, h, w) or (b, t, c, h, w), used when `noise` (the initial latent) is not given.
    generator: a CPU torch.Generator; the initial noise and every solver draw come from it, on the CPU, in
    SAT's order, so a seed gives SAT's latents on any device (None: torch's default CPU generator).
    concat, ofs: the I2V conditioning (`cogvid.diffusion.conditioning.image_conditioning`); concat (b, t, 16, h, w)
    is concatenated on channels at every call, never noised.
    start: (z0, k) to begin at step k of the plan instead of step 0 (SDEdit; the idea of SAT sgm sampling.py
    SdeditEDMSampler, here in sqrt(alpha_bar) space and for every solver): z0 is the clean scaled latent
    (b, t, c, h, w), the walk starts from x_k = a_k z0 + sqrt(1 - a_k^2) noise with a_k = alphas[k] and `noise` the
    run's initial noise (drawn as above), and the solver walks alphas[k:] with step i told it is step k + i (the
    timestep and guidance scale of that step). k = 0 is the ordinary sample, with the same draws in the same order,
    so the same latents; k = num_steps runs no step and returns z0.
    shard: this rank's `cogvid.parallel.sequence.SequenceShard` when a group of ranks makes the video together (each
    steps the whole latent; the DiT splits its tokens). split: this rank's `cogvid.parallel.guidance.GuidanceSplit`
    when two ranks (or groups) run the two guidance passes.
    """
    # 1. the initial latent and the conditions, on the model's device
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

    # 2. the plan, the step cache and the guided denoiser
    plan = sampling_plan(sampler, model.cfg.shift_scale)
    alphas = plan.schedule.alphas.to(device)
    cache = step_cache(sampler)  # for this run only
    network = image_network(model.backbone, concat, ofs, step_cache=cache, shard=shard)
    denoise = guided_denoiser(model, plan, network, alphas, cond, uncond, split)
    if cache is not None:
        denoise = cache.follow(denoise)

    # 3. the solver's walk over the plan
    def draw() -> torch.Tensor:
        return torch.randn(x.shape, generator=generator).to(device)

    def steps(n: int):
        return tqdm(range(n), desc="denoising", leave=False) if progress else range(n)

    latents = _walk(plan, denoise, x, alphas, draw, steps, start, device)
    if cache is not None:
        log.info("step cache %g: %d of %d DiT calls reused the blocks", cache.threshold, cache.reused, cache.calls)
    return latents


def step_cache(sampler) -> StepCache | None:
    """The `sampler` config's step cache for one walk; None without sampler.cache or at threshold 0 (a cache that
    never reuses would only copy and remember tensors on every DiT call of the exact path)."""
    threshold = sampler.get("cache")
    if not threshold:
        return None
    return StepCache(threshold, order=sampler.cache_order, warmup=sampler.cache_warmup, max_run=sampler.cache_max_run)


def _walk(plan: SamplingPlan, denoise, x, alphas, draw, steps, start, device) -> torch.Tensor:
    """The solver's walk from step 0, or from step k of `start` = (z0, k) (see sample_latents)."""
    if start is None:
        return plan.solver(denoise, x, alphas, draw, steps=steps)
    z0, k = start
    n = len(alphas) - 1
    if not 0 <= k <= n:
        raise ValueError(f"start step {k} is not in [0, {n}]")
    if tuple(z0.shape) != tuple(x.shape):
        raise ValueError(f"start latent {tuple(z0.shape)} does not match the noise {tuple(x.shape)}")
    if k == n:
        return z0.float().to(device)
    if k > 0:  # k = 0 keeps x = noise as it is: the text-to-video start, whatever alphas[0] is
        a = alphas[k]
        x = a * z0.float().to(device) + (1 - a**2).sqrt() * x

    def denoise_from_k(x_t: torch.Tensor, i: int) -> torch.Tensor:
        return denoise(x_t, k + i)

    return plan.solver(denoise_from_k, x, alphas[k:], draw, steps=steps)
