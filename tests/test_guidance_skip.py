"""Steps whose guidance scale is within 1e-4 of 1 run one conditional pass instead of two: the x0 estimate moves by
at most 1e-4 |x_c - x_u| there, and the step saves half its network batch."""

from __future__ import annotations

import pytest
import torch

import cogvid
from cogvid.diffusion import guidance
from cogvid.diffusion.guidance import SKIP_UNCOND_WITHIN, guidance_scale
from cogvid.diffusion.sampling import sample_latents, sampling_plan

TORCH_THREADS = 1


@pytest.mark.parametrize(
    "overrides,skipped",
    [
        ([], 2),  # SAT's schedule: steps 47 and 48 of 50
        (["sampler.dynamic_schedule=corrected"], 15),  # the ramp from 1: the first 15 of 50
        (["sampler.guider=constant"], 0),
    ],
)
def test_near_one_scales_become_single_passes(overrides, skipped):
    cfg = cogvid.compose(["model=tiny", "sampler.num_steps=50", *overrides])
    plan = sampling_plan(cfg.sampler, cfg.model.shift_scale)
    exact = [guidance_scale(cfg.sampler, i, int(t)) for i, t in enumerate(plan.schedule.timesteps)]
    assert [i for i, s in enumerate(plan.scales) if s is None] == [
        i for i, s in enumerate(exact) if abs(s - 1.0) <= SKIP_UNCOND_WITHIN
    ]
    assert sum(s is None for s in plan.scales) == skipped
    assert all(s == e for s, e in zip(plan.scales, exact, strict=True) if s is not None)


def test_skipping_saves_passes_and_stays_within_tolerance_of_the_exact_result(monkeypatch):
    cfg = cogvid.compose(["model=tiny", "sampler.num_steps=20", "sampler.dynamic_schedule=corrected"])
    torch.manual_seed(0)
    model = cogvid.build_model(cfg)
    for p in model.backbone.parameters():  # random weights large enough that x_c and x_u differ
        p.data.normal_(0, 0.05)
    cond, uncond = torch.randn(1, 8, 32), torch.randn(1, 8, 32)
    noise = torch.randn(1, 3, 16, 6, 8)
    batches = []
    forward = model.backbone.forward

    def counted(x, *args, **kwargs):
        batches.append(x.shape[0])
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(model.backbone, "forward", counted)
    fast = sample_latents(model, cfg.sampler, cond, uncond, noise=noise, generator=torch.Generator().manual_seed(1))
    fast_batches, batches[:] = list(batches), []
    monkeypatch.setattr(guidance, "SKIP_UNCOND_WITHIN", -1.0)  # never skip: the exact path
    exact = sample_latents(model, cfg.sampler, cond, uncond, noise=noise, generator=torch.Generator().manual_seed(1))
    assert batches == [2] * 20 and fast_batches.count(1) == 6 and sum(fast_batches) == 34  # 6 of 20 steps skip
    assert (fast - exact).abs().max().item() <= 1e-4 * (1 + exact.abs().max().item())
