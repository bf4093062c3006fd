"""ZeroSNR-DDPM discretization (SAT `discretizer.py`, `ZeroSNRDDPMDiscretization`), in sqrt(alpha_bar) space.

Everything here works with a = sqrt(alpha_bar_t), which SAT passes around under the name `sigma`. Betas, alpha_bar
and the SNR shift are float64; the selected alpha_bar are cast to float32 before the square root, and the
zero-terminal-SNR rescale is float32 with its scalar factor formed first, which makes the tables bit-exact to the
original's (on some CPUs up to 2**-23 off in a sixth of the entries: float32 rounding there differs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NUM_TIMESTEPS = 1000
LINEAR_START, LINEAR_END = 0.00085, 0.012


def shifted_alphas_cumprod(shift_scale: float) -> np.ndarray:
    """alpha_bar_t (float64, t = 0..999) of scaled-linear betas, with SNR divided by shift_scale."""
    betas = np.linspace(LINEAR_START**0.5, LINEAR_END**0.5, NUM_TIMESTEPS, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    return alphas_cumprod / (shift_scale + (1 - shift_scale) * alphas_cumprod)


def spaced_timesteps(num_steps: int) -> np.ndarray:
    """Ascending DDPM indices visited by an n-step sampler: int(linspace(999, 0, n, endpoint=False)), reversed."""
    if num_steps >= NUM_TIMESTEPS:
        return np.arange(NUM_TIMESTEPS)
    return np.linspace(NUM_TIMESTEPS - 1, 0, num_steps, endpoint=False).astype(int)[::-1].copy()


def rescale_zero_terminal(a: torch.Tensor) -> torch.Tensor:
    """Shift and stretch ascending-t sqrt(alpha_bar) so the last entry is exactly 0 and the first is unchanged."""
    a_first, a_last = a[0].clone(), a[-1].clone()
    return (a - a_last) * (a_first / (a_first - a_last))


@dataclass(frozen=True)
class SamplingSchedule:
    """What a sampler walks: sqrt(alpha_bar) from t=999 down (first entry 0) with 1.0 appended, and timesteps."""

    alphas: torch.Tensor  # (n + 1,) float32, descending t, alphas[0] = 0, alphas[-1] = 1
    timesteps: torch.Tensor  # (n,) int64, descending: step i visits timesteps[i]

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def sampling_schedule(num_steps: int, shift_scale: float, rescale: str = "subset") -> SamplingSchedule:
    """SAT's sampler discretization. rescale='subset' rescales over the selected steps (SAT);
    'full' rescales the 1000-entry table first and then selects (diffusers' CogVideoXDDIMScheduler)."""
    ts = spaced_timesteps(num_steps)
    alphas_cumprod = shifted_alphas_cumprod(shift_scale)
    if rescale == "subset":
        a = rescale_zero_terminal(torch.tensor(alphas_cumprod[ts], dtype=torch.float32).sqrt())
    elif rescale == "full":
        a = rescale_zero_terminal(torch.tensor(alphas_cumprod, dtype=torch.float32).sqrt())[torch.from_numpy(ts)]
    else:
        raise ValueError(f"unknown zero-SNR rescale {rescale!r}")
    alphas = torch.cat([a.flip(0), torch.ones(1)])
    return SamplingSchedule(alphas=alphas, timesteps=torch.from_numpy(ts.copy()).flip(0))


def training_table(shift_scale: float) -> torch.Tensor:
    """(1000,) float32 sqrt(alpha_bar) indexed by timestep (index 0 ~ 0.9996, index 999 = 0): the denoiser's
    and the training sigma sampler's table."""
    return rescale_zero_terminal(torch.tensor(shifted_alphas_cumprod(shift_scale), dtype=torch.float32).sqrt())
