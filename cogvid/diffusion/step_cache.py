"""A step cache for sampling (opt in: `sampler.cache=THRESHOLD`): TeaCache's accumulated change decides when the DiT's
blocks after the first may be skipped, and TaylorSeer's extrapolation stands in for them.

Between neighbouring denoising steps the DiT's input changes little for most of the walk, and so does what its
blocks add to it. At every call the first block runs, and the relative L1 change of its residual (its output minus
its input: the mean absolute change over the mean absolute value) since the previous call is added up (TeaCache, Liu
et al. 2024). While the sum stays below the threshold, the other blocks are skipped and their residual (last block's
output minus the first block's) is extrapolated from the last full calls (TaylorSeer, Liu et al. 2025): order 0 adds
the last full call's residual as it is; order 1 follows the line through the last two,
r(s) = r1 + (r1 - r0) (s - s1) / (s1 - s0) at step s; order 2 the parabola through the last three. Otherwise every
block runs, the residual is remembered and the sum starts again from 0. The first `warmup` steps of a walk always run
every block, and after `max_run` reused calls in a row the next one does too, whatever the sum (cache-dit's
max_continuous_cached_steps): an extrapolation is only as good as the full calls it starts from, and a long run of
reused calls that each changed little can still drift far. Threshold 0 never reuses: the exact path.

Calls of another batch size (e.g. guidance-free steps, which run only the conditional half) keep their own history.
One cache lives for one sampling run: `sample_latents` makes it, tells it each step (`follow`) and hands it to the DiT
at every call, through the network closure (`cogvid.diffusion.conditioning.image_network`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def relative_l1(now: torch.Tensor, before: torch.Tensor) -> float:
    """mean |now - before| / mean |before|."""
    return ((now - before).abs().mean() / before.abs().mean().clamp_min(1e-12)).item()


def extrapolate(history: list[tuple[int, torch.Tensor]], step: int) -> torch.Tensor:
    """The Newton polynomial through the (step, residual) points of `history` (oldest first), evaluated at `step`:
    one point gives it back, two the line through them, three the parabola. Points at one step (a solver's second
    call at the same step) give no slope: the last residual."""
    steps = [s for s, _ in history]
    if len(set(steps)) < len(steps):
        return history[-1][1]
    # Divided differences, newest point first: p(s) = r_n + d1 (s - s_n) + d2 (s - s_n)(s - s_{n-1}) + ...
    points = list(reversed(history))
    diffs = [r for _, r in points]
    out, factor = diffs[0], 1.0
    for order in range(1, len(points)):
        diffs = [(diffs[j] - diffs[j + 1]) / (points[j][0] - points[j + order][0]) for j in range(len(diffs) - 1)]
        factor *= step - points[order - 1][0]
        out = out + factor * diffs[0]
    return out


@dataclass
class _Track:
    """One batch size's history: the previous call's first-block residual, the change summed since the last full
    call, the calls reused since then, and the (step, residual of the later blocks) of the last full calls, oldest
    first."""

    signal: torch.Tensor | None = None
    change: float = 0.0
    run: int = 0
    full: list[tuple[int, torch.Tensor]] = field(default_factory=list)


class StepCache:
    def __init__(self, threshold: float, order: int = 1, warmup: int = 0, max_run: int | None = None):
        """The solver's steps are told with `follow` (or set as `step`). `max_run`: at most this many reused calls in
        a row (None: no limit)."""
        self.threshold = float(threshold)
        self.order, self.warmup, self.max_run = order, warmup, max_run
        self.step = 0  # the solver's step of the coming calls
        self.first_step: int | None = None  # the walk's first step (k when sampling starts at step k)
        self.tracks: dict[torch.Size, _Track] = {}
        self.calls = self.reused = 0

    def follow(self, denoise):
        """denoise(x, i) that tells this cache the step i before the calls it makes."""

        def denoise_here(x_t: torch.Tensor, i: int) -> torch.Tensor:
            self.step = i
            return denoise(x_t, i)

        return denoise_here

    def reuse(self, entry: torch.Tensor, first: torch.Tensor) -> torch.Tensor | None:
        """The whole stack's output for this call (block input `entry`, first-block output `first`) if the blocks
        after the first may be skipped; else None (then every block runs and `remember` is told their output)."""
        self.calls += 1
        if self.first_step is None:
            self.first_step = self.step
        track = self.tracks.setdefault(first.shape, _Track())
        signal = first - entry
        before, track.signal = track.signal, signal
        if self.threshold <= 0 or before is None or not track.full or self.step < self.first_step + self.warmup:
            return None
        track.change += relative_l1(signal, before)
        if track.change >= self.threshold or (self.max_run is not None and track.run >= self.max_run):
            return None
        track.run += 1
        self.reused += 1
        return first + extrapolate(track.full[-(self.order + 1) :], self.step)

    def remember(self, first: torch.Tensor, last: torch.Tensor) -> None:
        """After a full call: its residual of the blocks after the first, and a new start for the summed change."""
        track = self.tracks[first.shape]
        track.change, track.run = 0.0, 0
        kept = track.full[-self.order :] if self.order else []  # the last `order` full calls
        track.full = [*kept, (self.step, last - first)]
