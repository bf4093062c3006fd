"""A whole exported tiny pipeline in diffusers' `CogVideoXPipeline` (offline), DDIM parity with cogvid, and back.

cogvid's options that follow diffusers' CogVideoXDDIMScheduler + CogVideoXPipeline:
    sampler=ddim sampler.zero_snr_rescale=full sampler.uncond=negative_prompt sampler.guider=constant
with the unconditional context = T5("") (diffusers' default negative prompt). Step counts must divide 1000 (see
README: diffusers' `trailing` spacing and `prev_t = t - 1000 // N` differ from SAT's spacing otherwise).
"""

from __future__ import annotations

import json

import diffusers
import pytest
import torch
from conftest import FIXTURE

import cogvid
from cogvid.diffusion.sampling import sample_latents
from cogvid.interop.run import run_export
from cogvid.models.t5 import T5Conditioner
from cogvid.sat.loading import build_model, load_vae

PROMPT = "a red fox in snow"
STEPS = 5
GUIDANCE = 6.0


def export_cfg(*overrides: str):
    return cogvid.compose(["model=tiny", *overrides], config_name="export")


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory, tiny_t5_dir):
    out = tmp_path_factory.mktemp("export") / "tiny-diffusers"
    cfg = export_cfg(
        "task=to_diffusers",
        f"model.ckpt={FIXTURE / 'dit_ckpt'}",
        f"model.vae_ckpt={FIXTURE / 'vae' / '3d-vae.pt'}",
        f"model.text_encoder.path={tiny_t5_dir}",
        "max_shard_size=200KB",  # the 0.8 MB transformer in shards, as a 5B one is at 5GB
        f"out={out}",
    )
    run_export(cfg)
    return out


def test_layout_and_configs(pipeline_dir):
    index = json.loads((pipeline_dir / "model_index.json").read_text())
    assert index["_class_name"] == "CogVideoXPipeline"
    shards = sorted(p.name for p in (pipeline_dir / "transformer").glob("*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"diffusion_pytorch_model-00001-of-{len(shards):05d}.safetensors"
    weight_map = json.loads(
        (pipeline_dir / "transformer" / "diffusion_pytorch_model.safetensors.index.json").read_text()
    )
    assert set(weight_map["weight_map"].values()) == set(shards)
    scheduler = json.loads((pipeline_dir / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["snr_shift_scale"] == 3.0 and scheduler["prediction_type"] == "v_prediction"
    tokenizer = json.loads((pipeline_dir / "tokenizer" / "tokenizer_config.json").read_text())
    assert tokenizer["model_max_length"] == 8
    vae = json.loads((pipeline_dir / "vae" / "config.json").read_text())
    assert vae["scaling_factor"] == 1.15258426 and vae["block_out_channels"] == [32, 32, 32, 32]


@pytest.fixture(scope="module")
def pipe(pipeline_dir):
    return diffusers.CogVideoXPipeline.from_pretrained(pipeline_dir, local_files_only=True, dtype=torch.float32)


def noise(seed: int = 11) -> torch.Tensor:
    return torch.randn(1, 3, 16, 6, 8, generator=torch.Generator().manual_seed(seed))


def diffusers_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    out = pipe(
        prompt=PROMPT,
        latents=latents.clone(),
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        height=48,
        width=64,
        num_frames=9,
        max_sequence_length=8,
        output_type="latent",
    )
    return out.frames


def cogvid_latents(ckpt, t5_path, latents: torch.Tensor) -> torch.Tensor:
    cfg = cogvid.compose(
        [
            "model=tiny",
            f"model.ckpt={ckpt}",
            f"model.text_encoder.path={t5_path}",
            "sampler=ddim",
            "sampler.zero_snr_rescale=full",
            "sampler.uncond=negative_prompt",
            "sampler.guider=constant",
            f"sampler.num_steps={STEPS}",
            f"sampler.guidance_scale={GUIDANCE}",
        ]
    )
    model = build_model(cfg.model)
    model.backbone.eval()
    t5 = T5Conditioner.from_model_config(cfg.model)
    cond, uncond = t5.encode([PROMPT]), t5.encode([""])
    return sample_latents(model, cfg.sampler, cond, uncond, noise=latents)


def test_ddim_in_diffusers_equals_cogvid_ddim(pipe, pipeline_dir):
    latents = noise()
    theirs = diffusers_latents(pipe, latents)
    # T5 read from the exported pipeline folder (tokenizer/ + text_encoder/): the same text encoder on both sides
    ours = cogvid_latents(FIXTURE / "dit_ckpt", pipeline_dir, latents)
    assert theirs.shape == ours.shape
    # norm_out eps 1e-5 (diffusers) vs 1e-6 (SAT) accounts for most of the difference (see test_interop)
    assert (theirs - ours).abs().max() <= 1e-4


def test_whole_pipeline_decodes_offline(pipe):
    video = pipe(
        prompt=PROMPT,
        latents=noise(),
        num_inference_steps=2,
        height=48,
        width=64,
        num_frames=9,
        max_sequence_length=8,
        output_type="pt",
    ).frames
    assert video.shape == (1, 9, 3, 48, 64) and torch.isfinite(video).all()


def test_pipeline_imports_to_sat_and_samples(pipeline_dir, tmp_path):
    sat = tmp_path / "tiny-sat"
    run_export(export_cfg("task=to_sat", f"source={pipeline_dir}", f"out={sat}"))
    assert (sat / "transformer" / "latest").read_text() == "1"
    assert (sat / "transformer" / "1" / "mp_rank_00_model_states.pt").is_file()
    assert (sat / "vae" / "3d-vae.pt").is_file() and (sat / "t5-v1_1-xxl" / "config.json").is_file()
    from cogvid.sat.checkpoint import read_sat_state_dict

    original, _ = read_sat_state_dict(FIXTURE / "dit_ckpt")
    imported, _ = read_sat_state_dict(sat / "transformer")
    assert imported.keys() == original.keys() and all(torch.equal(imported[k], v) for k, v in original.items())
    latents = noise(5)
    ours = cogvid_latents(sat / "transformer", sat / "t5-v1_1-xxl", latents)
    reference = cogvid_latents(FIXTURE / "dit_ckpt", pipeline_dir, latents)
    assert torch.equal(ours, reference)
    vae = load_vae(cogvid.compose(["model=tiny", f"model.vae_ckpt={sat / 'vae' / '3d-vae.pt'}"]).model)
    video = vae.decode_chunked(ours.permute(0, 2, 1, 3, 4) / 1.15258426)
    assert video.shape == (1, 3, 9, 48, 64)


def test_imported_sat_folder_runs_in_cogvid_sample(pipeline_dir, tmp_path):
    from safetensors.torch import load_file

    from cogvid.inference.run import run_sample

    sat = tmp_path / "tiny-sat"
    run_export(export_cfg("task=to_sat", f"source={pipeline_dir}", f"out={sat}"))

    def sample(name: str, ckpt, vae, t5):
        cfg = cogvid.compose(
            [
                "model=tiny",
                f"model.ckpt={ckpt}",
                f"model.vae_ckpt={vae}",
                f"model.text_encoder.path={t5}",
                f"infer.output_dir={tmp_path / name}",
                f"infer.prompt={PROMPT}",
                "infer.save_latents=true",
                "sampler.num_steps=3",
                "device=cpu",
            ]
        )
        mp4 = next(p for p in run_sample(cfg) if p.suffix == ".mp4")
        return load_file(mp4.with_name(mp4.stem + ".latents.safetensors"))["latents"]

    imported = sample("imported", sat / "transformer", sat / "vae" / "3d-vae.pt", sat / "t5-v1_1-xxl")
    original = sample("original", FIXTURE / "dit_ckpt", FIXTURE / "vae" / "3d-vae.pt", pipeline_dir)
    assert torch.equal(imported, original)


@pytest.mark.parametrize("variant", ["5b_i2v", "1.5_5b_i2v"])
def test_image_to_video_variants_load_as_their_pipeline(variant, tmp_path, tiny_t5_dir):
    from test_interop import random_dit, tiny_model_cfg

    from cogvid.sat.checkpoint import save_sat_checkpoint

    cfg = tiny_model_cfg(variant)
    save_sat_checkpoint(random_dit(cfg), tmp_path / "sat", 1)
    overrides = tiny_overrides(variant)
    out = tmp_path / "pipe"
    run_export(
        cogvid.compose(
            [
                f"model={variant}",
                *overrides,
                "task=to_diffusers",
                f"model.ckpt={tmp_path / 'sat'}",
                f"model.vae_ckpt={FIXTURE / 'vae' / '3d-vae.pt'}",
                f"model.text_encoder.path={tiny_t5_dir}",
                f"out={out}",
            ],
            config_name="export",
        )
    )
    pipe = diffusers.CogVideoXImageToVideoPipeline.from_pretrained(out, local_files_only=True, dtype=torch.float32)
    assert pipe.transformer.config.in_channels == 32
    assert pipe.vae.config.invert_scale_latents == variant.startswith("1.5")
    assert pipe.scheduler.config.snr_shift_scale == 1.0 and pipe.tokenizer.model_max_length == 8


def tiny_overrides(variant: str) -> list[str]:
    from test_interop import EXTRA, GRID_V10, GRID_V15, TINY

    grid = GRID_V15 if variant.startswith("1.5") else GRID_V10
    return [f"model.{o}" for o in (*TINY, *grid, *EXTRA.get(variant, ()))]
