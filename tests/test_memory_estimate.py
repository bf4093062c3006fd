"""The memory estimate (cogvid.inference.memory) against what the models hold and what the CPU measures, and what a
run does with it: refuse what cannot fit before anything loads, tile a decode that would not fit, free T5."""

import itertools
import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli, run_script, text_contexts
from test_sample import tiny

from cogvid.config.compose import compose
from cogvid.inference import memory
from cogvid.inference.pipeline import VideoPipeline, load_pipeline
from cogvid.inference.plan import plan_loading, video_settings
from cogvid.inference.video_shape import vae_spatial, video_shape
from cogvid.models.dit import DiffusionTransformer
from cogvid.models.t5 import local_t5_config, t5_weight_bytes
from cogvid.models.vae import CausalVideoVAE
from cogvid.utils.errors import CogvidError

PROBE = Path(__file__).parent / "memory_probe.py"
SHAPES_VIDEO = ["model=shapes"]


def real_bytes(module: torch.nn.Module, dtype: torch.dtype) -> int:
    size = torch.tensor([], dtype=dtype).element_size()
    return sum(t.numel() for t in (*module.parameters(), *module.buffers())) * size


@pytest.mark.parametrize("variant", ["2b", "5b", "1.5_5b", "5b_i2v"])
def test_weights_are_counted_exactly(variant):
    small = ["model.hidden_size=64", "model.num_attention_heads=2", "model.num_layers=2", "model.time_embed_dim=64"]
    small += [
        "model.text_encoder.path=null",
        "model.vae.ch=32",
        "model.vae.ch_mult=[1,2]",
        "model.vae.num_res_blocks=1",
    ]
    small += ["model.vae.temporal_compress_times=2"]
    cfg = compose([f"model={variant}", *small])
    counted = memory.estimate(cfg, video_shape(cfg.model, 9, 32, 32), torch.bfloat16, torch.float32)
    assert counted.dit_weights == real_bytes(DiffusionTransformer(cfg.model), torch.bfloat16)
    vae = CausalVideoVAE.from_config(cfg.model.vae)
    assert counted.vae_weights == real_bytes(vae, torch.float32)


@pytest.mark.parametrize("which", ["tiny", "shapes"])
def test_t5_weights_from_its_config(which, tiny_t5_dir):
    from transformers import T5EncoderModel

    folder = tiny_t5_dir if which == "tiny" else compose(SHAPES_VIDEO).model.text_encoder.path  # shapes: gated-gelu
    config = local_t5_config(folder)
    encoder = T5EncoderModel.from_pretrained(folder)
    # T5EncoderModel ties the shared embedding and the encoder's: each parameter once
    assert t5_weight_bytes(config, torch.float32) == real_bytes(encoder, torch.float32)


# Peaks measured in a process of their own with a fixed glibc mmap threshold (tests/memory_probe.py).
MEDIUM = ["model.hidden_size=384", "model.num_attention_heads=6"]
RELEASED_VAE = ["model.vae.ch=128", "model.vae.ch_mult=[1,2,2,4]", "model.vae.num_res_blocks=3"]
# Each measures 130-280 MiB, a few times the 50 MiB floor below (the smaller the size, the more the constant terms
# weigh: the released VAE's widths at 48 x 64 are already at 1.24 of 1.3).
PROBES = [
    ("dit", 9, 240, 352, ["model=shapes", *MEDIUM, "model.num_layers=2"]),  # 2B layout: sin-cos, no qk-norm
    ("dit", 25, 240, 352, ["model=5b", "model.text_encoder.path=null", *MEDIUM, "model.num_layers=1"]),  # RoPE
    ("vae", 25, 96, 128, ["model=shapes"]),  # the shapes VAE: 32 wide, 3 levels (4x in space); 3 chunks
    ("vae", 9, 64, 96, ["model=shapes", *RELEASED_VAE]),  # the released VAE's widths
]


@pytest.fixture(scope="module")
def measured_peaks() -> list[dict]:
    """Every probe of PROBES measured by one tests/memory_probe.py process (forked from the tests' zygote, torch and
    cogvid imported already), each in a forked child of its own: its figures, in order."""
    probes = []
    for kind, frames, height, width, overrides in PROBES:
        spatial = vae_spatial(compose(overrides).model)
        grid = [f"model.num_frames={frames}", f"model.latent_height={height // spatial}"]
        grid += [f"model.latent_width={width // spatial}"]
        probes.append([kind, frames, height, width, [*overrides, *grid]])
    out = run_script(PROBE, json.dumps(probes), env={"OMP_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr[-2000:]
    figures = [json.loads(line) for line in out.stdout.strip().splitlines()[-len(PROBES) :]]
    assert len(figures) == len(PROBES), out.stdout[-2000:]
    return figures


@pytest.mark.parametrize(("kind", "frames", "height", "width", "overrides"), PROBES)
def test_estimate_follows_the_measured_cpu_peak(kind, frames, height, width, overrides, measured_peaks):
    figures = measured_peaks[PROBES.index((kind, frames, height, width, overrides))]
    assert "error" not in figures, figures.get("error")
    assert figures["measured"] > 50 * 2**20  # large enough that the activations, not the process, are measured
    assert 0.8 <= figures["estimate"] / figures["measured"] <= 1.3, figures


def shapes_estimate(*overrides):
    cfg = compose([*SHAPES_VIDEO, *overrides])
    shape = video_shape(cfg.model, None, None, None)
    return cfg, shape, memory.estimate(cfg, shape, torch.float32, torch.float32)


def test_on_the_cpu_t5_runs_beside_the_other_weights():
    cfg, shape, on_gpu = shapes_estimate()
    on_cpu = memory.estimate(cfg, shape, torch.float32, torch.float32, device_type="cpu")
    assert on_cpu.text_phase == on_gpu.text_phase + on_gpu.weights


def test_decode_tile_is_the_whole_frame_when_it_fits_and_the_largest_tile_when_not():
    cfg, shape, _ = shapes_estimate()
    shape = video_shape(cfg.model, 9, 64, 64)
    whole = memory.decode_bytes(cfg.model, shape, torch.float32, None)
    assert memory.decode_tile(cfg.model, shape, torch.float32, whole) is None
    tile = memory.decode_tile(cfg.model, shape, torch.float32, whole - 1)
    assert tile is not None and max(tile) < 16  # 16 x 16 latents in all
    assert memory.decode_bytes(cfg.model, shape, torch.float32, tile) <= whole - 1
    with pytest.raises(CogvidError, match="even in tiles of"):
        memory.decode_tile(cfg.model, shape, torch.float32, 1024)


def test_tiles_shrink_in_steps_and_stop_at_eight_latents():
    tiles = memory._tile_candidates(60, 90)  # a 480 x 720 video
    assert tiles[0] == (35, 53)  # halves, widened by the blend overlap
    assert all(a[0] >= b[0] and a[1] >= b[1] for a, b in itertools.pairwise(tiles))
    assert min(tiles[-1]) == 8


def test_refusal_names_what_would_fit():
    gpu = torch.device("cuda")  # only named: with memory_limit_gb set, nothing asks the device
    cfg = compose(["model=2b", "model.text_encoder.path=null"])
    shape = video_shape(cfg.model, None, None, None)
    e = memory.estimate(cfg, shape, torch.float32, torch.float32)
    half = memory.estimate(cfg, shape, torch.bfloat16, torch.bfloat16)
    budget = e.weights + e.sampling * 6 // 10  # fp32 at 49 frames does not fit; fewer frames and bf16 do
    assert half.weights + half.sampling < budget
    cfg.memory_limit_gb = budget / memory.GB
    with pytest.raises(CogvidError) as refused:
        memory.check_fits(cfg, shape, gpu, torch.float32, torch.float32)
    line = str(refused.value)
    assert "\n" not in line and "the DiT needs about" in line and "dtype=bf16" in line
    assert "infer.num_frames=" in line  # fewer frames in fp32 would fit too
    frames = int(line.split("infer.num_frames=")[1].split()[0].rstrip(")"))
    fewer = memory.estimate(cfg, video_shape(cfg.model, frames, 480, 720), torch.float32, torch.float32)
    assert fewer.weights + fewer.sampling <= budget
    more = memory.estimate(cfg, video_shape(cfg.model, frames + 8, 480, 720), torch.float32, torch.float32)
    assert more.weights + more.sampling > budget
    cfg.memory_limit_gb = e.peak / memory.GB
    assert memory.check_fits(cfg, shape, gpu, torch.float32, torch.float32)[0] == e


def test_cli_refuses_a_run_that_cannot_fit_before_loading_or_writing(tmp_path):
    out = tmp_path / "out"
    result = run_cli(
        "cogvid-sample", "model=shapes", "device=cpu", "infer.prompt=a red circle", f"infer.output_dir={out}",
        "memory_limit_gb=0.02", "hydra.run.dir=" + str(tmp_path / "run"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "needs about" in lines[0] and "memory_limit_gb=0.02" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not (tmp_path / "run").exists()


def test_a_decode_that_does_not_fit_is_tiled(tmp_path, tiny_t5_dir):
    cfg = tiny(tmp_path, tiny_t5_dir, "sampler.num_steps=2", "infer.vae_tile=auto")
    pipeline = VideoPipeline.from_config(cfg)
    shape = pipeline.shape_for(None)
    whole = pipeline.generate("a fox", seed=1, shape=shape)
    held = memory.loaded_bytes(pipeline.model.backbone, pipeline.vae)
    need = memory.decode_bytes(cfg.model, shape, torch.float32, None)
    cfg.memory_limit_gb = (held + need - 1) / memory.GB  # one byte short of the whole-frame decode
    tiled_pipeline = pipeline.with_settings(video_settings(cfg))
    tile = tiled_pipeline.decode_tile(shape)
    assert tile is not None
    tiled = tiled_pipeline.generate("a fox", seed=1, shape=shape)
    assert torch.equal(tiled.latents, whole.latents)
    expected = pipeline.vae.decode_chunked(whole.latents, "v1_0", tile=tile)[0]
    assert torch.allclose(tiled.video, expected, atol=1e-6)
    assert not torch.allclose(tiled.video, whole.video, atol=1e-4)  # per-tile GroupNorm: not the exact decode


def test_t5_is_encoded_first_and_freed(tmp_path, tiny_t5_dir, monkeypatch):
    from cogvid.models.t5 import T5Conditioner

    cfg = tiny(tmp_path, tiny_t5_dir, "sampler.num_steps=2", "sampler.uncond=negative_prompt")
    t5 = T5Conditioner.from_model_config(cfg.model)
    expected = {text: t5.encode([text]) for text in ("a fox", "a cat", "blurry")}
    pipeline = load_pipeline(plan_loading(cfg), video_settings(cfg), prompts=["a fox", "blurry"])
    assert pipeline.text_encoder is None  # freed before the DiT and the VAE loaded

    def no_t5(*args, **kwargs):
        raise AssertionError("T5 loaded again for a text already encoded")

    monkeypatch.setattr(T5Conditioner, "from_model_config", no_t5)
    cond, uncond = text_contexts(pipeline, "a fox", "blurry")
    assert torch.equal(cond, expected["a fox"]) and torch.equal(uncond, expected["blurry"])
    pipeline.generate("a fox", seed=3, negative_prompt="blurry")
    monkeypatch.undo()
    assert torch.equal(pipeline.encode_texts(["a cat"]), expected["a cat"])  # a new text loads T5 again
