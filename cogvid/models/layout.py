"""The two layouts of a video or latent tensor, and the one flip between them.

The VAE (and SAT's first stage) works channels-first, (b, c, t, h, w); the DiT, the denoiser and the samplers work
frames-first, (b, t, c, h, w), as SAT's SATVideoDiffusionEngine permutes them before the network. Pixel videos and
latents flip the same way. Both functions return views (no copy).
"""

from __future__ import annotations

import torch


def to_dit_layout(x: torch.Tensor) -> torch.Tensor:
    """(b, c, t, h, w) -> (b, t, c, h, w)."""
    return x.permute(0, 2, 1, 3, 4)


def to_vae_layout(x: torch.Tensor) -> torch.Tensor:
    """(b, t, c, h, w) -> (b, c, t, h, w)."""
    return x.permute(0, 2, 1, 3, 4)
