"""SAT DiscreteDenoiser with VideoScaling: the v-prediction network turned into an x0 estimate.

SAT `sgm/modules/diffusionmodules/denoiser.py` and `denoiser_scaling.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cogvid.diffusion.schedules import training_table

# network(x_t, timesteps) -> v, both (b, t, c, h, w); timesteps (b,) float DDPM indices
Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DiscreteDenoiser:
    """x0 = a x_t - sqrt(1 - a^2) v(x_t, t), with a = sqrt(alpha_bar) snapped to the nearest 1000-table entry.

    The snap is not cosmetic: a sampler's subset-rescaled a falls between table entries, so c_skip and c_out
    come from a neighbouring timestep while the network still sees the sampler's timestep, as in SAT.
    The table stays float32 whatever the network's dtype.
    """

    def __init__(self, shift_scale: float):
        self.shift_scale = shift_scale
        # (1000,) float32, index = timestep; SAT's DiscreteDenoiser calls this table `sigmas`
        self.sqrt_alphas_cumprod = training_table(shift_scale)

    def snap(self, a: torch.Tensor) -> torch.Tensor:
        """The table entry nearest to each a (SAT `possibly_quantize_sigma`)."""
        table = self.sqrt_alphas_cumprod.to(a.device)
        idx = (a.reshape(-1, 1) - table[None]).abs().argmin(dim=1)
        return table[idx].reshape(a.shape)

    def __call__(self, network: Network, x: torch.Tensor, a: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x: (b, ...) float32; a: (b,) sqrt(alpha_bar); timesteps: (b,) what the network is told."""
        a = self.snap(a.float()).reshape(-1, *([1] * (x.ndim - 1)))
        c_skip, c_out = a, -((1 - a**2) ** 0.5)
        return network(x, timesteps).float() * c_out + x * c_skip
