"""benchmarks/gpu_harness.py on the CPU: a tiny run of the whole harness, its analytic DiT FLOPs against torch's
FLOP counter, and how it judges the issue's goals."""

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cogvid.config.compose import compose
from cogvid.diffusion.sampling import sampling_plan
from cogvid.models.dit import DiffusionTransformer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_harness  # noqa: E402

TORCH_THREADS = 1  # tensors this small only spin on more threads

# A tiny DiT, T5 and VAE in the real variants' layouts, 9 frames at 32 x 48 (latent 3 x 4 x 6).
TINY = [
    "model.hidden_size=64",
    "model.num_attention_heads=2",
    "model.num_layers=2",
    "model.time_embed_dim=48",
    "model.text_hidden_size=32",
    "model.text_length=8",
    "model.vae.ch=32",
    "model.vae.ch_mult=[1,1,1,1]",
    "model.vae.num_res_blocks=1",
    "infer.num_frames=9",
    "infer.height=32",
    "infer.width=48",
]
# With this ramp the first two of 3 steps have a guidance scale within 1e-4 of 1: they run without the unconditional
# half, so the DiT sees batches of 1, 1 and 2.
RAMP = ["sampler.dynamic_schedule=corrected", "sampler.dynamic_exp=20"]
STEPS = 3


def test_tiny_cpu_run_reports_every_figure(tmp_path):
    argv = ["--variants", "2b", "1.5_5b", "--device", "cpu", "--steps", str(STEPS), "--rounds", "1"]
    argv += ["--warmup", "1", "--warmup-steps", "1"]  # a 1-step warm-up video, not counted below
    argv += ["--t5-size", "tiny", "--name", "tiny", "--results", str(tmp_path), "--override", *TINY, *RAMP]
    assert gpu_harness.main(argv) == 0

    result = json.loads((tmp_path / "tiny.json").read_text())
    assert result["cuda"] is False and result["dtype"] == "float32" and result["torch"] == torch.__version__
    assert set(result["variants"]) == {"2b", "1.5_5b"}
    for variant, row in result["variants"].items():
        for key in ("text_s", "sampling_s", "decoding_s", "s_per_step", "s_per_video", "peak_memory_gb", "tflops"):
            assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, (variant, key, row[key])
        assert row["s_per_video"] == pytest.approx(row["text_s"] + row["sampling_s"] + row["decoding_s"])
        assert row["s_per_step"] == pytest.approx(row["sampling_s"] / STEPS)
        assert (row["frames"], row["height"], row["width"]) == (9, 32, 48)
        assert row["goal_met"] is None and row["goal_note"] == "n/a (CPU)"

        # The hook counted the calls the sampler config plans: one per step, batch 2 where the step is guided.
        cfg = compose([f"model={variant}", *TINY, *RAMP, f"sampler.num_steps={STEPS}"])
        items = [1 if scale is None else 2 for scale in sampling_plan(cfg.sampler, cfg.model.shift_scale).scales]
        assert items == [1, 1, 2]  # the premise of RAMP
        assert (row["dit_calls"], row["dit_batch_items"]) == (STEPS, sum(items))
        t, h, w = row["latent"]
        flops = sum(gpu_harness.dit_forward_flops(cfg.model, t, h, w, cfg.model.text_length, b) for b in items)
        assert row["dit_tflop_per_video"] == pytest.approx(flops / 1e12)
        assert row["tflops"] == pytest.approx(flops / 1e12 / row["sampling_s"])
    assert result["variants"]["1.5_5b"]["latent"] == [4, 4, 6]  # 3 latents + the 1.5 family's padding one

    table = (tmp_path / "tiny.md").read_text()
    assert "| variant | frames x H x W |" in table
    for variant in ("2b", "1.5_5b"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {variant} |"))
        assert "| 9 x 32 x 48 |" in row and row.endswith("| n/a (CPU) |")


@pytest.mark.parametrize("variant", ["2b", "5b", "1.5_5b", "1.5_5b_i2v"])
def test_dit_flops_match_torch_flop_counter(variant):
    """The analytic count equals what FlopCounterMode measures on a real forward (with SDPA's math backend, whose
    matmuls it counts; its CPU flash kernel has no FLOP formula): sin-cos 2B, RoPE 5B, 1.5's Linear patches and
    temporal patch of 2, and 1.5-I2V's 32 input channels and ofs MLP."""
    extra = ["model.ofs_embed_dim=48"] if variant == "1.5_5b_i2v" else []  # SAT adds it to the time embedding
    sizes = ["model.num_frames=17", "model.latent_height=8", "model.latent_width=12"]
    m = compose([f"model={variant}", *TINY[:6], *sizes, *extra]).model
    torch.manual_seed(0)
    dit = DiffusionTransformer(m).eval()
    batch, t = 2, 3 * m.patch_size_t
    x = torch.randn(batch, t, m.in_channels, 8, 12)
    context = torch.randn(batch, m.text_length, m.text_hidden_size)
    ofs = torch.full((batch,), 2.0) if m.ofs_embed_dim else None
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        dit(x, torch.tensor([999.0, 20.0]), context, ofs=ofs)
    measured = counter.get_total_flops()
    assert counter.get_flop_counts()["Global"].get(torch.ops.aten.bmm, 0) > 0  # attention was counted
    assert gpu_harness.dit_forward_flops(m, t, 8, 12, m.text_length, batch) == measured


def test_goals_are_judged_only_on_cuda_at_the_real_shapes():
    args = SimpleNamespace(steps=50, override=[], t5_size="xxl")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    fast_small = {"s_per_video": 20.0, "peak_memory_gb": 9.0}
    fast_large = {"s_per_video": 20.0, "peak_memory_gb": 12.0}
    assert gpu_harness.goal_check("2b", fast_small, args, cuda)[1] is True
    assert gpu_harness.goal_check("2b", fast_large, args, cuda)[1] is False  # 2B's memory goal counts too
    assert gpu_harness.goal_check("5b", {"s_per_video": 61.0}, args, cuda)[1] is False
    assert gpu_harness.goal_check("1.5_5b", {"s_per_video": 279.0}, args, cuda)[1] is True
    assert gpu_harness.goal_check("2b", fast_small, args, cpu)[1:] == (None, "n/a (CPU)")
    for changed in ({"steps": 10}, {"override": ["infer.num_frames=9"]}, {"t5_size": "tiny"}):
        assert gpu_harness.goal_check("2b", fast_small, SimpleNamespace(**{**vars(args), **changed}), cuda)[1] is None
