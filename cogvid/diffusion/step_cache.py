"""A step cache for sampling (opt in: `sampler.cache=THRESHOLD`), in the manner of First-Block-Cache / TeaCache.

Between neighbouring denoising steps the DiT's input changes little for most of the walk, and so does what its
blocks add to it. At every call the first block runs; its output is compared with the first block's output at the
last call that ran every block (the mean absolute change over the mean absolute value). Below the threshold, the
other blocks are skipped and that call's residual (last block's output minus the first block's) is added instead.
Otherwise every block runs and the pair is remembered. Threshold 0 never reuses: the exact path.

One cache lives for one sampling run: `sample_latents` makes it and hands it to the DiT at every call, through the
network closure (`cogvid.diffusion.conditioning.image_network`).
"""

from __future__ import annotations

import torch


class StepCache:
    def __init__(self, threshold: float):
        self.threshold = float(threshold)
        self.first: torch.Tensor | None = None  # the first block's output at the last full call
        self.residual: torch.Tensor | None = None  # what the other blocks added at that call
        self.calls = self.reused = 0

    def reuse(self, first: torch.Tensor) -> torch.Tensor | None:
        """The whole stack's output for this first-block output if the cached residual may stand in; else None."""
        self.calls += 1
        if self.first is None or self.first.shape != first.shape:  # e.g. a guidance-free step has half the batch
            return None
        change = (first - self.first).abs().mean() / self.first.abs().mean().clamp_min(1e-12)
        if change.item() >= self.threshold:
            return None
        self.reused += 1
        return first + self.residual

    def remember(self, first: torch.Tensor, last: torch.Tensor) -> None:
        self.first, self.residual = first, last - first
