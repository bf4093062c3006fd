"""Training objective: SAT DiscreteSampling (timestep sampler) and VideoDiffusionLoss.

SAT `sgm/modules/diffusionmodules/sigma_sampling.py` and `loss.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cogvid.diffusion.denoiser import DiscreteDenoiser
from cogvid.diffusion.schedules import NUM_TIMESTEPS
from cogvid.utils.errors import CogvidError


def auto_group_num(world_size: int) -> int:
    """SAT v1.0: the smallest i >= 1 with world % i == 0 and 1000 % (world / i) == 0 gives world / i groups."""
    for i in range(1, world_size + 1):
        if world_size % i == 0 and NUM_TIMESTEPS % (world_size // i) == 0:
            return world_size // i
    return 1


class DiscreteSampling:
    """Draws training timesteps; with uniform_sampling each rank draws from its own slice of [0, 1000).

    rank r of W, in G groups of W / G ranks: group g = r // (W / G) draws idx ~ U{g 1000/G, ..., (g+1) 1000/G - 1},
    so every step covers the whole range across ranks. One rank (or uniform_sampling off) draws from all 1000.
    """

    def __init__(
        self,
        sqrt_alphas_cumprod: torch.Tensor,
        uniform_sampling: bool,
        group_num: int | None,
        rank: int,
        world_size: int,
    ):
        self.sqrt_alphas_cumprod = sqrt_alphas_cumprod  # (1000,) indexed by timestep: the denoiser's table
        self.low, self.high = 0, NUM_TIMESTEPS
        if uniform_sampling and world_size > 1:
            groups = group_num or auto_group_num(world_size)
            if world_size % groups or NUM_TIMESTEPS % groups:
                raise CogvidError(f"model.group_num={groups} must divide both the world size {world_size} and 1000")
            width, interval = world_size // groups, NUM_TIMESTEPS // groups
            group = rank // width
            self.low, self.high = group * interval, (group + 1) * interval

    def __call__(self, n: int, generator: torch.Generator | None = None, device=None):
        """(sqrt(alpha_bar), timestep index), each (n,)."""
        idx = torch.randint(self.low, self.high, (n,), generator=generator)
        return self.sqrt_alphas_cumprod[idx].to(device), idx.to(device)


class VideoDiffusionLoss:
    """w (x0_hat - x0)^2 averaged per sample, w = 1 / (1 - a^2): exactly the MSE on the v target."""

    def __init__(self, denoiser: DiscreteDenoiser, sigma_sampler: DiscreteSampling, offset_noise_level: float = 0.0):
        self.denoiser, self.sigma_sampler, self.offset_noise_level = (
            denoiser,
            sigma_sampler,
            offset_noise_level,
        )

    def __call__(
        self,
        network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """x0: (b, t, c, h, w) scaled latents; network(x_t, timesteps) -> v. Returns the (b,) per-sample loss."""
        x0 = x0.float()
        a, idx = self.sigma_sampler(x0.shape[0], generator=generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        if self.offset_noise_level > 0:
            eps = eps + self.offset_noise_level * torch.randn(x0.shape[0], generator=generator).to(x0.device).reshape(
                -1, *([1] * (x0.ndim - 1))
            )
        a_b = a.reshape(-1, *([1] * (x0.ndim - 1)))
        x_t = a_b * x0 + (1 - a_b**2) ** 0.5 * eps
        x0_hat = self.denoiser(network, x_t, a, idx.float())
        w = 1 / (1 - a_b**2)
        return (w * (x0_hat - x0) ** 2).reshape(x0.shape[0], -1).mean(dim=1)
