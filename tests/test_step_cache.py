"""sampler.cache: the DiT's blocks after the first are skipped while the first block's output changes less than the
threshold since the last full call (cogvid/diffusion/step_cache.py); threshold 0 and no cache are the exact path."""

from __future__ import annotations

import pytest
import torch

import cogvid
from cogvid.config.checks import check_values
from cogvid.diffusion.sampling import sample_latents
from cogvid.diffusion.step_cache import StepCache

TORCH_THREADS = 1


def tiny_run(*overrides: str):
    cfg = cogvid.compose(["model=tiny", "model.num_layers=3", "sampler.num_steps=8", *overrides])
    torch.manual_seed(0)
    model = cogvid.build_model(cfg)
    with torch.no_grad():
        for p in model.backbone.parameters():  # random weights that make every block matter
            p.normal_(0, 0.05)
    calls = []
    for i, layer in enumerate(model.backbone.transformer.layers):
        layer.register_forward_hook(lambda *_, i=i: calls.append(i))
    cond = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1))
    latents = sample_latents(model, cfg.sampler, cond, shape=(3, 16, 6, 8), generator=torch.Generator().manual_seed(2))
    assert not hasattr(model.backbone, "step_cache")  # the cache lives in the sampling run, not on the network
    return latents, calls


def test_threshold_zero_is_the_exact_path():
    exact, calls = tiny_run()
    zero, zero_calls = tiny_run("sampler.cache=0")
    assert torch.equal(exact, zero) and calls == zero_calls == [0, 1, 2] * 8


def test_a_threshold_skips_the_later_blocks_and_stays_close():
    exact, _ = tiny_run()
    cached, calls = tiny_run("sampler.cache=1e9")  # every call after the first full one reuses
    # the first call runs every block; the guidance-free steps (batch 1) have no cached residual of their shape
    assert calls.count(0) == 8 and calls.count(1) == calls.count(2) < 8
    assert torch.isfinite(cached).all() and not torch.equal(cached, exact)
    assert (cached - exact).abs().mean() < exact.abs().mean()


def test_reuse_adds_the_remembered_residual_and_needs_the_same_shape():
    cache = StepCache(0.5)
    first, last = torch.ones(2, 3), torch.full((2, 3), 4.0)
    assert cache.reuse(first) is None  # nothing remembered yet
    cache.remember(first, last)
    assert torch.equal(cache.reuse(first * 1.1), first * 1.1 + 3.0)  # change 0.1 < 0.5
    assert cache.reuse(first * 3) is None  # change 2.0
    assert cache.reuse(torch.ones(1, 3)) is None  # another batch
    assert (cache.calls, cache.reused) == (4, 1)


@pytest.mark.parametrize("value", ["-0.1", "nan", "inf"])
def test_a_bad_threshold_is_refused(value):
    with pytest.raises(cogvid.CogvidError, match="sampler.cache="):
        check_values(cogvid.compose(["model=tiny", f"sampler.cache={value}"]))
