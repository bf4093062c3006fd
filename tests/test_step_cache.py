"""sampler.cache: the DiT's blocks after the first are skipped while the first block's residual has changed less than
the threshold, summed over the calls since the last full one, and their residual is extrapolated from the last full
calls (cogvid/diffusion/step_cache.py); threshold 0 and no cache are the exact path."""

from __future__ import annotations

import pytest
import torch

import cogvid
from cogvid.config.checks import check_values
from cogvid.diffusion.sampling import sample_latents
from cogvid.diffusion.step_cache import StepCache, extrapolate

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
    # every call after the first full one may reuse; the guidance-free steps (batch 1) have their own history
    cached, calls = tiny_run("sampler.cache=1e9", "sampler.cache_warmup=0")
    assert calls.count(0) == 8 and calls.count(1) == calls.count(2) < 8
    assert torch.isfinite(cached).all() and not torch.equal(cached, exact)
    assert (cached - exact).abs().mean() < exact.abs().mean()


def test_warmup_steps_run_every_block():
    _, calls = tiny_run("sampler.cache=1e9", "sampler.cache_warmup=3", "sampler.guider=constant")
    assert calls == [0, 1, 2] * 3 + [0] * 3 + [0, 1, 2] + [0]  # one call a step; steps 0-2 in full, then 3 reused a run
    _, calls = tiny_run(
        "sampler.cache=1e9", "sampler.cache_warmup=3", "sampler.guider=constant", "sampler.cache_max_run=null"
    )
    assert calls == [0, 1, 2] * 3 + [0] * 5  # no limit: the rest reused


def calls_of(cache: StepCache, firsts: list[float], entry: float = 0.0) -> list[bool]:
    """Feed the cache one call per step with a first-block output of each value (block input `entry`); True where it
    reused. A full call's last block adds 10 + step."""
    reused = []
    for step, value in enumerate(firsts):
        cache.step = step
        first, before = torch.full((2, 3), value), torch.full((2, 3), entry)
        out = cache.reuse(before, first)
        if out is None:
            cache.remember(first, first + 10 + step)
        reused.append(out is not None)
    return reused


def test_the_change_is_summed_over_reused_calls_until_it_passes_the_threshold():
    cache = StepCache(0.25, order=0)
    # the first block's residual grows 10 % a call: reuse at 0.1 and 0.2 summed, a full call at 0.3, and again
    values = [1.1**k for k in range(7)]
    assert calls_of(cache, values) == [False, True, True, False, True, True, False]
    assert (cache.calls, cache.reused) == (7, 4)


def test_threshold_zero_never_reuses_even_an_unchanged_call():
    cache = StepCache(0.0)
    assert not any(calls_of(cache, [1.0] * 6)) and cache.reused == 0


def test_no_reuse_in_the_warmup_steps():
    cache = StepCache(1e9, order=0, warmup=3)
    assert calls_of(cache, [1.0] * 6) == [False] * 3 + [True] * 3


def test_the_warmup_counts_from_the_walks_first_step():
    cache = StepCache(1e9, order=0, warmup=2)
    reused = []
    for step in range(5, 10):  # a walk that starts at step 5 (infer.strength < 1)
        cache.step = step
        first = torch.ones(2, 3)
        out = cache.reuse(torch.zeros(2, 3), first)
        if out is None:
            cache.remember(first, first + 1)
        reused.append(out is not None)
    assert reused == [False, False, True, True, True]


def test_after_max_run_reused_calls_in_a_row_the_next_one_runs_every_block():
    cache = StepCache(1e9, order=0, max_run=2)
    assert calls_of(cache, [1.0] * 8) == [False, True, True, False, True, True, False, True]
    assert (cache.calls, cache.reused) == (8, 5)
    assert calls_of(StepCache(1e9, order=0, max_run=None), [1.0] * 6) == [False] + [True] * 5  # no limit
    assert not any(calls_of(StepCache(1e9, order=0, max_run=0), [1.0] * 4))


def test_max_run_counts_each_batch_size_apart():
    cache = StepCache(1e9, order=0, max_run=1)
    assert calls_of(cache, [1.0] * 2) == [False, True]  # batch 2: its one reuse
    half = torch.ones(1, 3)
    for step, reused in ((2, False), (3, True)):  # the conditional half alone keeps its own count
        cache.step = step
        out = cache.reuse(torch.zeros(1, 3), half)
        assert (out is not None) == reused
        if out is None:
            cache.remember(half, half + 7)
    cache.step = 4
    assert cache.reuse(torch.zeros(2, 3), torch.ones(2, 3)) is None  # batch 2 had used its run


@pytest.mark.parametrize("order", [0, 1, 2])
def test_a_reuse_adds_the_extrapolated_residual(order):
    cache = StepCache(1e9, order=order)
    residual = [torch.tensor([1.0, -2.0]) * s**2 + torch.tensor([3.0, 0.5]) * s + 4.0 for s in range(20)]
    for step in (0, 2, 3):  # full calls at steps 0, 2 and 3
        cache.step = step
        first = torch.ones(2)
        if step == 0:
            assert cache.reuse(first - 1, first) is None
        cache.remember(first, first + residual[step])
    cache.step = 6
    first = torch.full((2,), 2.0)
    out = cache.reuse(first - 1, first)  # the first block's residual unchanged
    r2, r3 = residual[2], residual[3]
    expected = {0: r3, 1: r3 + (r3 - r2) * (6 - 3) / (3 - 2), 2: residual[6]}[order]  # order 2 is exact on a parabola
    assert out is not None and torch.allclose(out, first + expected)


def test_extrapolate_follows_the_polynomial_through_the_points():
    points = [(1, torch.tensor(2.0)), (4, torch.tensor(11.0))]  # the line 3 s - 1
    assert extrapolate(points, 6) == 17.0
    assert extrapolate(points[1:], 6) == 11.0
    assert extrapolate([(4, torch.tensor(1.0)), (4, torch.tensor(5.0))], 6) == 5.0  # one step twice: no slope


def test_another_batch_size_keeps_its_own_history():
    cache = StepCache(1e9, order=0)
    calls_of(cache, [1.0, 1.0])  # batch 2: full, then reused
    cache.step = 2
    half = torch.ones(1, 3)  # a guidance-free step: the conditional half only
    assert cache.reuse(torch.zeros(1, 3), half) is None
    cache.remember(half, half + 7)
    cache.step = 3
    assert torch.equal(cache.reuse(torch.zeros(1, 3), half), half + 7)
    assert torch.equal(cache.reuse(torch.zeros(2, 3), torch.ones(2, 3)), torch.full((2, 3), 11.0))  # step 0's residual


@pytest.mark.parametrize(
    ("override", "option"),
    [
        ("sampler.cache=-0.1", "sampler.cache="),
        ("sampler.cache=nan", "sampler.cache="),
        ("sampler.cache=inf", "sampler.cache="),
        ("sampler.cache_order=3", "sampler.cache_order=3 must be 0, 1 or 2"),
        ("sampler.cache_order=-1", "sampler.cache_order=-1 must be 0, 1 or 2"),
        ("sampler.cache_warmup=-1", "sampler.cache_warmup=-1 must be >= 0"),
        ("sampler.cache_max_run=-1", "sampler.cache_max_run=-1 must be >= 0"),
    ],
)
def test_a_bad_cache_option_is_refused(override, option):
    with pytest.raises(cogvid.CogvidError, match=option.replace(".", r"\.")):
        check_values(cogvid.compose(["model=tiny", override]))
