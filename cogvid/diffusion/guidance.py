"""Classifier-free guidance outside both model and solver (SAT `guiders.py`, VanillaCFG / DynamicCFG)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from cogvid.config.schema import DynamicSchedule, Guider


def guidance_scale(cfg, step_index: int, timestep: int) -> float | None:
    """The CFG scale at one step; None means no guidance (one conditional pass).

    DynamicCFG: 1 + s (1 - cos(pi (k / N)^exp)) / 2. The original ('faithful') takes k = num_steps - timestep,
    with the DDPM timestep where a step index was meant, and N the guider's own step count; 'corrected' takes
    k = step index + 1 and N = num_steps, so the scale ramps from about 1 at the first step to 1 + s at the last.
    """
    guider = Guider(cfg.guider)
    if guider is Guider.none:
        return None
    if guider is Guider.constant:
        return float(cfg.guidance_scale)
    if DynamicSchedule(cfg.dynamic_schedule) is DynamicSchedule.faithful:
        k, n = float(cfg.num_steps - timestep), cfg.dynamic_num_steps
    else:
        k, n = float(step_index + 1), cfg.num_steps
    return 1 + cfg.guidance_scale * (1 - math.cos(math.pi * (k / n) ** cfg.dynamic_exp)) / 2


# A scale this close to 1 is run as one conditional pass: x_u + s (x_c - x_u) = x_c + (s - 1)(x_c - x_u), so the x0
# estimate moves by at most 1e-4 |x_c - x_u| and the step saves the unconditional half of its batch.
SKIP_UNCOND_WITHIN = 1e-4


def guidance_scales(cfg, timesteps: torch.Tensor) -> list[float | None]:
    """The CFG scale of every step of a run, in step order; `timesteps` (n,) are the DDPM timesteps it visits. A
    scale within SKIP_UNCOND_WITHIN of 1 becomes None (no unconditional pass); DynamicCFG's ramp has such steps:
    2 of 50 with SAT's schedule, 15 of 50 with dynamic_schedule=corrected."""
    scales = [guidance_scale(cfg, i, int(t)) for i, t in enumerate(timesteps)]
    return [None if s is not None and abs(s - 1.0) <= SKIP_UNCOND_WITHIN else s for s in scales]


def guided(
    denoise_batch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    scale: float | None,
    split=None,
) -> torch.Tensor:
    """x_u + scale (x_c - x_u) from one batched pass over [uncond ; cond] (uncond first, as SAT batches it).

    denoise_batch(x, context) -> x0 for a batch; with scale None only the conditional pass runs. split: a
    `cogvid.parallel.guidance.GuidanceSplit`: this rank runs one of the two passes and gets the other's.
    """
    if scale is None:
        return denoise_batch(x, cond)
    if split is not None:
        x_u, x_c = split.both(denoise_batch, x, uncond, cond)
        return x_u + scale * (x_c - x_u)
    x_u, x_c = denoise_batch(torch.cat([x, x]), torch.cat([uncond, cond])).chunk(2)
    return x_u + scale * (x_c - x_u)
