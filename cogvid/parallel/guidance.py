"""CFG parallelism: the unconditional and the conditional pass of classifier-free guidance on two ranks (or two
sequence-parallel groups) at once, instead of one batch of both on each.

Rank 0 of the pair denoises with the unconditional context, rank 1 with the conditional one; an all-gather gives both
the two estimates, and each combines them as one process does (`cogvid.diffusion.guidance.guided`). Each pass is the
one-sample half of the batch one process runs, so the result equals it up to the order of floating-point sums in
the kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class GuidanceSplit:
    """This rank's pass (0: unconditional, 1: conditional) in a pair of ranks `group`."""

    rank: int
    group: dist.ProcessGroup | None = None

    def both(
        self,
        denoise_batch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        uncond: torch.Tensor,
        cond: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 unconditional, x0 conditional): this rank's pass, and the other's from the pair."""
        mine = denoise_batch(x, (uncond, cond)[self.rank]).contiguous()
        halves = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(halves, mine, group=self.group)
        return halves[0], halves[1]
