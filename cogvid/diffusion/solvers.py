"""Samplers as small pure functions over one contract, `denoise(x, i) -> x0` (SAT `diffusionmodules/sampling.py`).

They walk `alphas` = sqrt(alpha_bar) from t = 999 (exactly 0: zero terminal SNR) up, with 1.0 appended; step i
goes from alphas[i] to alphas[i + 1]. `noise()` returns a fresh standard normal shaped like x, the only source of
randomness of every solver. The number and order of noise draws of the three video solvers are the original's
(VPSDEDPMPP2MSampler: 1 at step 0, 2 per middle step, the first thrown away, none at the last), so a seed
reproduces SAT's latents.

The rest of SAT's family (EulerEDMSampler, HeunEDMSampler, EulerAncestralSampler, DPMPP2SAncestralSampler,
LinearMultistepSampler, DPMPP2MSampler) is written in EDM's variables: sigma = sqrt(1 - a^2) / a and the state
x_edm = x / a = x0 + sigma * eps, the network seeing a * x_edm. sigma is infinite at a = 0, so the first step is
taken explicitly as a pure x0 prediction: x_edm <- x0_hat + sigma_next * e, with e = x (at a = 0 the VP state is
the noise itself) for the deterministic solvers and a fresh draw for the ancestral ones; after it the ordinary
formula applies (also from step 0 when a schedule starts above 0). The last step reaches a = 1 (sigma = 0), where
x_edm is the sample; the single-step solvers return the last x0 estimate there, as the formulas give.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
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


def sample_ddpm(denoise: Denoise, x: torch.Tensor, alphas: torch.Tensor, noise: Noise, steps=range):
    """Ancestral DDPM (the idea of SAT's VideoDDPMSampler): x_next ~ q(x_next | x, x0_hat), the forward process's
    posterior. With a_step = a / a_next: mean = a_step (1 - a_next^2) / (1 - a^2) x + a_next (1 - a_step^2) /
    (1 - a^2) x0_hat, variance = (1 - a_next^2) / (1 - a^2) (1 - a_step^2). 1 draw per step, none at the last."""
    for i in steps(len(alphas) - 1):
        a, a_next = float(alphas[i]), float(alphas[i + 1])
        x0 = denoise(x, i)
        if a_next == 1:  # the posterior at a = 1 is x0_hat itself, noise-free
            return x0
        # At a = 0 (step 0) every term is finite as written: a_step = 0, so x's weight is 0 and the step is
        # a_next x0_hat + sqrt(1 - a_next^2) z, a pure re-noising of the x0 prediction.
        a_step = a / a_next
        c_x = a_step * (1 - a_next**2) / (1 - a**2)
        c_x0 = a_next * (1 - a_step**2) / (1 - a**2)
        std = math.sqrt((1 - a_next**2) / (1 - a**2) * (1 - a_step**2))
        x = c_x * x + c_x0 * x0 + std * noise()
    return x


def edm_sigma(a: float) -> float:
    """EDM's noise level of sqrt(alpha_bar) = a: sigma = sqrt(1 - a^2) / a (inf at a = 0, 0 at a = 1)."""
    return math.inf if a == 0 else math.sqrt(1 - a * a) / a


def _edm_state(x: torch.Tensor, a0: float) -> torch.Tensor:
    """x_edm = x / a at the first step; at a = 0 the VP state, pure noise, which the sigma = inf step reads as e."""
    return x if a0 == 0 else x / a0


def ancestral_split(sigma: float, sigma_next: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step with eta = 1 (SAT sampling_utils get_ancestral_step):
    sigma_up = min(sigma_next, sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)),
    sigma_down = sqrt(sigma_next^2 - sigma_up^2); from sigma = inf all of sigma_next is fresh noise."""
    if sigma == math.inf:
        return 0.0, sigma_next
    sigma_up = min(sigma_next, math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def sample_euler(denoise: Denoise, x: torch.Tensor, alphas: torch.Tensor, noise: Noise | None = None, steps=range):
    """SAT EulerEDMSampler with its default s_churn = 0 (deterministic): x_edm <- x_edm + (sigma_next - sigma) d,
    d = (x_edm - x0_hat) / sigma. Mathematically DDIM; 1 evaluation per step."""
    x = _edm_state(x, float(alphas[0]))
    for i in steps(len(alphas) - 1):
        a = float(alphas[i])
        sigma, sigma_next = edm_sigma(a), edm_sigma(float(alphas[i + 1]))
        if sigma == math.inf:  # x is the noise: the DDIM transfer x_edm = x0_hat + sigma_next eps
            x = denoise(x, i) + sigma_next * x
            continue
        x0 = denoise(a * x, i)
        if sigma_next == 0:  # Euler to sigma = 0 lands on x0_hat
            return x0
        x = x + (sigma_next - sigma) * (x - x0) / sigma
    return x


def sample_heun(denoise: Denoise, x: torch.Tensor, alphas: torch.Tensor, noise: Noise | None = None, steps=range):
    """SAT HeunEDMSampler (s_churn = 0): the Euler step, then the trapezoid x_edm + (sigma_next - sigma) (d + d') / 2
    with d' from the denoiser at step i + 1 at the Euler point. 2 evaluations per step; 1 at the first step (an
    infinite interval has no trapezoid: the Euler x0 prediction) and at the last (sigma_next = 0, as SAT)."""
    x = _edm_state(x, float(alphas[0]))
    for i in steps(len(alphas) - 1):
        a, a_next = float(alphas[i]), float(alphas[i + 1])
        sigma, sigma_next = edm_sigma(a), edm_sigma(a_next)
        if sigma == math.inf:
            x = denoise(x, i) + sigma_next * x
            continue
        x0 = denoise(a * x, i)
        if sigma_next == 0:
            return x0
        d = (x - x0) / sigma
        x_euler = x + (sigma_next - sigma) * d
        d_next = (x_euler - denoise(a_next * x_euler, i + 1)) / sigma_next
        x = x + (sigma_next - sigma) * (d + d_next) / 2
    return x


def sample_euler_ancestral(denoise: Denoise, x: torch.Tensor, alphas: torch.Tensor, noise: Noise, steps=range):
    """SAT EulerAncestralSampler (eta = 1): Euler down to sigma_down, then sigma_up of fresh noise. With eta = 1
    this is the DDPM posterior step again; 1 evaluation and 1 draw per step, no draw at the last."""
    x = _edm_state(x, float(alphas[0]))
    for i in steps(len(alphas) - 1):
        a = float(alphas[i])
        sigma, sigma_next = edm_sigma(a), edm_sigma(float(alphas[i + 1]))
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next)
        if sigma == math.inf:  # sigma_down = 0: the x0 prediction, re-noised to sigma_next
            x = denoise(x, i) + sigma_up * noise()
            continue
        x0 = denoise(a * x, i)
        if sigma_next == 0:
            return x0
        x = x + (sigma_down - sigma) * (x - x0) / sigma + sigma_up * noise()
    return x


def sample_dpmpp2s_ancestral(denoise: Denoise, x: torch.Tensor, alphas: torch.Tensor, noise: Noise, steps=range):
    """SAT DPMPP2SAncestralSampler (eta = 1): DPM-Solver++(2S) from sigma to sigma_down in t = -log sigma through
    the midpoint sigma_mid = sqrt(sigma sigma_down), then sigma_up of fresh noise. With eta = 1, sigma_down =
    sigma_next^2 / sigma, so sigma_mid is exactly sigma_next: the second evaluation is step i + 1's denoiser.
    2 evaluations and 1 draw per step; 1 evaluation at the first (sigma = inf) and the last (sigma_next = 0)."""
    x = _edm_state(x, float(alphas[0]))
    for i in steps(len(alphas) - 1):
        a, a_next = float(alphas[i]), float(alphas[i + 1])
        sigma, sigma_next = edm_sigma(a), edm_sigma(a_next)
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next)
        if sigma == math.inf:
            x = denoise(x, i) + sigma_up * noise()
            continue
        x0 = denoise(a * x, i)
        if sigma_next == 0:
            return x0
        # exp(-h / 2) = sigma_mid / sigma and exp(-h) = sigma_down / sigma, h = log(sigma / sigma_down):
        # x_mid = (sigma_mid / sigma) x - expm1(-h / 2) x0_hat, x <- (sigma_down / sigma) x - expm1(-h) x0_mid
        sigma_mid = sigma_next
        x_mid = (sigma_mid / sigma) * x + (1 - sigma_mid / sigma) * x0
        x0_mid = denoise(a_next * x_mid, i + 1)
        x = (sigma_down / sigma) * x + (1 - sigma_down / sigma) * x0_mid + sigma_up * noise()
    return x


def lms_coefficients(sigmas: list[float], sigma_from: float, sigma_to: float) -> list[float]:
    """Integrals over [sigma_from, sigma_to] of the Lagrange basis on the nodes `sigmas` (SAT sampling_utils
    linear_multistep_coeff, which uses scipy's quad): Gauss-Legendre with as many points as nodes, exact for
    the basis polynomials of degree len(sigmas) - 1."""
    unit_points, unit_weights = np.polynomial.legendre.leggauss(len(sigmas))
    half = (sigma_to - sigma_from) / 2
    tau = sigma_from + half * (unit_points + 1)
    coeffs = []
    for j, node in enumerate(sigmas):
        basis = np.ones_like(tau)
        for k, other in enumerate(sigmas):
            if k != j:
                basis *= (tau - other) / (node - other)
        coeffs.append(float(half * (unit_weights * basis).sum()))
    return coeffs


def sample_lms(
    denoise: Denoise, x: torch.Tensor, alphas: torch.Tensor, noise: Noise | None = None, steps=range, order: int = 4
):
    """SAT LinearMultistepSampler (order 4): x_edm <- x_edm + sum_j c_j d_j over the last `order` derivatives
    d = (x_edm - x0_hat) / sigma, c_j the integral of their Lagrange basis in sigma over the step. The sigma = inf
    step is the x0 prediction and leaves no node (a polynomial in sigma can't pass through infinity), so the
    history starts at step 1. 1 evaluation per step; the result is x_edm at sigma = 0."""
    x = _edm_state(x, float(alphas[0]))
    sigmas = [edm_sigma(float(a)) for a in alphas]
    history: list[torch.Tensor] = []  # derivatives at sigmas[i - len + 1 .. i], oldest first
    for i in steps(len(alphas) - 1):
        a = float(alphas[i])
        if sigmas[i] == math.inf:
            x = denoise(x, i) + sigmas[i + 1] * x
            continue
        history = [*history, (x - denoise(a * x, i)) / sigmas[i]][-order:]
        coeffs = lms_coefficients(sigmas[i - len(history) + 1 : i + 1], sigmas[i], sigmas[i + 1])
        x = x + sum(c * d for c, d in zip(coeffs, history, strict=True))
    return x


def sample_dpmpp2m_edm(
    denoise: Denoise, x: torch.Tensor, alphas: torch.Tensor, noise: Noise | None = None, steps=range
):
    """SAT DPMPP2MSampler, the plain (non-VP) DPM-Solver++(2M) in t = -log sigma: h = t_next - t,
    r = h_last / h, x0_d = (1 + 1/(2r)) x0_hat - 1/(2r) x0_prev, x_edm <- (sigma_next / sigma) x_edm - expm1(-h) x0_d.
    First order where there is no finite previous sigma; mathematically the VP-ODE DPM++(2M). 1 evaluation per step."""
    x = _edm_state(x, float(alphas[0]))
    old_x0, old_sigma = None, None
    for i in steps(len(alphas) - 1):
        a = float(alphas[i])
        sigma, sigma_next = edm_sigma(a), edm_sigma(float(alphas[i + 1]))
        if sigma == math.inf:  # h = inf: x0_hat + sigma_next eps; at the next step h_last = inf, r = inf: 1st order
            x = denoise(x, i) + sigma_next * x
            continue
        x0 = denoise(a * x, i)
        if sigma_next == 0:  # expm1(-inf) = -1: the x0 estimate
            return x0
        h = math.log(sigma / sigma_next)
        x0_d = x0
        if old_x0 is not None:
            r = math.log(old_sigma / sigma) / h
            x0_d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * old_x0
        x = (sigma_next / sigma) * x - math.expm1(-h) * x0_d
        old_x0, old_sigma = x0, sigma
    return x


SOLVERS = {
    "dpmpp2m_sde": sample_dpmpp2m_sde,
    "dpmpp2m_ode": sample_dpmpp2m_ode,
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "euler": sample_euler,
    "heun": sample_heun,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp2s_ancestral": sample_dpmpp2s_ancestral,
    "lms": sample_lms,
    "dpmpp2m_edm": sample_dpmpp2m_edm,
}
