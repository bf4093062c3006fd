"""Samplers as small pure functions over one contract, `denoise(x, i) -> x0` (SAT `diffusionmodules/sampling.py`).

They walk `alphas` = sqrt(alpha_bar) from t = 999 (exactly 0: zero terminal SNR) up, with 1.0 appended; step i
goes from alphas[i] to alphas[i + 1]. `noise()` returns a fresh standard normal shaped like x. The number and order
of noise draws are the original's (VPSDEDPMPP2MSampler: 1 at step 0, 2 per middle step, the first thrown away,
none at the last), so a seed reproduces SAT's latents.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoise = Callable[[torch.Tensor, int], torch.Tensor]
Noise = Callable[[], torch.Tensor]


def half_log_snr(a: torch.Tensor) -> torch.Tensor:
    """lambda = log(a / sqrt(1 - a^2)), as SAT evaluates it (float32; -inf at a = 0)."""
    alpha_cumprod = a**2
    return ((alpha_cumprod / (1 - alpha_cumprod)) ** 0.5).log()


def _dpmpp2m(denoise: Denoise, x: torch.Tensor, alphas: torch.Tensor, noise: Noise | None, steps) -> torch.Tensor:
    """DPM-Solver++(2M) in sqrt(alpha_bar) space; with `noise` the VP-SDE variant, without it the ODE one."""
    n = len(alphas) - 1
    old_x0 = None
    for i in steps(n):
        a, a_next = alphas[i], alphas[i + 1]
        x0 = denoise(x, i)
        if i == n - 1:  # SAT's idx == 1: the result is the last x0 estimate
            return x0
        sigma_ratio = ((1 - a_next**2) / (1 - a**2)) ** 0.5
        if a == 0:
            # First step: lambda(0) = -inf, h = +inf. exp(-h) = 0, expm1(-h) = -1: pure re-noising of x0.
            h = torch.tensor(float("inf"))
            m1 = torch.zeros(()) if noise is not None else sigma_ratio
            m2 = -a_next
        else:
            h = half_log_snr(a_next) - half_log_snr(a)
            m1 = sigma_ratio * (-h).exp() if noise is not None else sigma_ratio
            m2 = (-2 * h).expm1() * a_next if noise is not None else (-h).expm1() * a_next
        m_noise = (1 - a_next**2) ** 0.5 * (1 - (-2 * h).exp()) ** 0.5 if noise is not None else None

        # The first-order update is always formed, with its own noise draw, as in the original.
        x_first = m1 * x - m2 * x0 + (m_noise * noise() if noise is not None else 0)
        if old_x0 is None or a_next < 1e-14:
            x = x_first
        else:
            if alphas[i - 1] == 0:  # lambda_prev = -inf: r = inf, the step stays first order
                m3, m4 = 1.0, 0.0
            else:
                r = (half_log_snr(a) - half_log_snr(alphas[i - 1])) / h
                m3, m4 = 1 + 1 / (2 * r), 1 / (2 * r)
            d = m3 * x0 - m4 * old_x0
            x = m1 * x - m2 * d + (m_noise * noise() if noise is not None else 0)
        old_x0 = x0
    return x


def sample_dpmpp2m_sde(denoise: Denoise, x: torch.Tensor, alphas: torch.Tensor, noise: Noise, steps=range):
    """SAT VPSDEDPMPP2MSampler: 1 draw at step 0, 2 at each middle step (the first discarded), none at the last."""
    return _dpmpp2m(denoise, x, alphas, noise, steps)


def sample_dpmpp2m_ode(
    denoise: Denoise, x: torch.Tensor, alphas: torch.Tensor, noise: Noise | None = None, steps=range
):
    """SAT VPODEDPMPP2MSampler: deterministic, no draws."""
    return _dpmpp2m(denoise, x, alphas, None, steps)


def sample_ddim(denoise: Denoise, x: torch.Tensor, alphas: torch.Tensor, noise: Noise | None = None, steps=range):
    """SAT VideoDDIMSampler: x <- c1 x + c2 x0, c1 = sqrt((1 - a_next^2)/(1 - a^2)), c2 = a_next - a c1;
    every step runs, the last (a_next = 1) returns x0."""
    for i in steps(len(alphas) - 1):
        a, a_next = alphas[i], alphas[i + 1]
        x0 = denoise(x, i)
        c1 = ((1 - a_next**2) / (1 - a**2)) ** 0.5
        x = c1 * x + (a_next - a * c1) * x0
    return x


SOLVERS = {
    "dpmpp2m_sde": sample_dpmpp2m_sde,
    "dpmpp2m_ode": sample_dpmpp2m_ode,
    "ddim": sample_ddim,
}
