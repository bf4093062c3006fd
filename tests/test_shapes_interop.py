"""model=shapes through `cogvid-export task=to_diffusers`: diffusers' CogVideoXPipeline loads the folder strictly and
offline, tokenises as cogvid does and makes cogvid's video for the same prompt, seed and settings.

The shipped weights are not needed: the test writes random weights of model=shapes' own sizes (no size override: the
DiT 192 wide x 6 layers, 4 heads of 48, text 16 x 64; the VAE of model.vae's widths; the word-level shapes T5), which
run whole on a CPU in about a second. Every DiT weight is random (`random_dit`), the output projection included, so the
video is not the zero-init model's constant.

cogvid side: `sampler=ddim sampler.zero_snr_rescale=full sampler.uncond=negative_prompt sampler.guider=constant`
(README: what diffusers' CogVideoXPipeline + CogVideoXDDIMScheduler do), negative prompt "", the same seed: diffusers
draws its initial noise (1, 3, 16, 8, 8) from a CPU generator exactly as cogvid does. Steps: 4 (must divide 1000).
"""

from __future__ import annotations

import json

import diffusers
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_interop import random_dit

import cogvid
from cogvid.inference.pipeline import VideoPipeline
from cogvid.interop.run import run_export
from cogvid.models.vae import CausalVideoVAE
from cogvid.sat.checkpoint import save_sat_checkpoint, write_sat_model_states
from cogvid.shapes.text_encoder import build_shapes_t5

TORCH_THREADS = 1
PROMPTS = ("a red circle moving right", "an orange square moving up")
STEPS, GUIDANCE, SEED = 4, 6.0, 7
PARITY = ["sampler=ddim", "sampler.zero_snr_rescale=full", "sampler.uncond=negative_prompt", "sampler.guider=constant"]
# Pixels in [0, 1] (diffusers' output_type="pt"; cogvid's [-1, 1] video / 2 + 0.5, clamped as diffusers does). Both
# sides run the same float32 arithmetic in another order, and diffusers' final norm_out LayerNorm has eps 1e-5 where
# SAT's has 1e-6 (README, test_interop). Measured: latents (|x| up to 5.5) 3.4e-5, pixels 1.2e-5 (with that eps
# set to 1e-6 in diffusers: 1.3e-5 and 6.8e-6; at 50 steps 3.0e-5 and 9.7e-6). 1e-4 on the pixels is 1/40 of an
# 8-bit level (1/255), so the uint8 videos are the same up to values that sit on a rounding boundary.
PIXEL_TOL = LATENT_TOL = 1e-4


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> list[str]:
    """model=shapes overrides naming random weights of its own sizes, in the layouts the shipped ones use."""
    root = tmp_path_factory.mktemp("shapes-weights")
    cfg = cogvid.compose(["model=shapes"]).model
    dit = random_dit(cfg)
    assert dit.mixins["final_layer"].linear.weight.abs().min() > 0  # not the zero-init projection
    save_sat_checkpoint(dit, root / "transformer", 1)
    torch.manual_seed(0)
    vae = CausalVideoVAE.from_config(cfg.vae)
    write_sat_model_states(root / "vae" / "3d-vae.pt", vae.state_dict(), wrapper="state_dict", desc="vae")
    t5 = build_shapes_t5(root / "t5")
    return [
        "model=shapes",
        f"model.ckpt={root / 'transformer'}",
        f"model.vae_ckpt={root / 'vae' / '3d-vae.pt'}",
        f"model.text_encoder.path={t5}",
    ]


@pytest.fixture(scope="module")
def exported(weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "shapes-diffusers"
    run_export(cogvid.compose([*weights, "task=to_diffusers", f"out={out}"], "export"))
    return out


@pytest.fixture(scope="module")
def pipe(exported):
    pipe = diffusers.CogVideoXPipeline.from_pretrained(exported, local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ours(weights):
    cfg = cogvid.compose(
        [*weights, *PARITY, f"sampler.num_steps={STEPS}", f"sampler.guidance_scale={GUIDANCE}", "device=cpu"]
    )
    return VideoPipeline.from_config(cfg)


def test_exported_configs(exported):
    model = cogvid.compose(["model=shapes"]).model
    read = {part: json.loads((exported / part / "config.json").read_text()) for part in ("transformer", "vae")}
    transformer, vae = read["transformer"], read["vae"]
    expected_transformer = {
        "num_layers": 6,
        "num_attention_heads": 4,
        "attention_head_dim": 48,
        "time_embed_dim": 192,
        "in_channels": 16,
        "out_channels": 16,
        "text_embed_dim": 64,
        "max_text_seq_length": 16,
        "patch_size": 2,
        "patch_size_t": None,
        "sample_frames": 9,
        "sample_height": 16,
        "sample_width": 16,
        "temporal_compression_ratio": 4,
        "spatial_interpolation_scale": 1.875,
        "use_rotary_positional_embeddings": False,
        "use_learned_positional_embeddings": False,
    }
    assert {k: transformer[k] for k in expected_transformer} == expected_transformer
    expected_vae = {
        "block_out_channels": [model.vae.ch * m for m in model.vae.ch_mult],  # [32, 64, 64] for ch_mult [1,2,2]
        "layers_per_block": 1,
        "latent_channels": 16,
        "norm_num_groups": 32,
        "norm_eps": 1e-6,
        "temporal_compression_ratio": 4,
        "sample_height": 64,
        "sample_width": 64,
        "scaling_factor": model.scale_factor,
        "invert_scale_latents": False,
    }
    assert {k: vae[k] for k in expected_vae} == expected_vae
    scheduler = json.loads((exported / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "CogVideoXDDIMScheduler" and scheduler["snr_shift_scale"] == 3.0
    assert scheduler["prediction_type"] == "v_prediction" and scheduler["timestep_spacing"] == "trailing"
    assert scheduler["rescale_betas_zero_snr"] is True
    tokenizer = json.loads((exported / "tokenizer" / "tokenizer_config.json").read_text())
    assert tokenizer["model_max_length"] == 16
    assert json.loads((exported / "model_index.json").read_text())["_class_name"] == "CogVideoXPipeline"


def _file_tensors(folder) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def test_the_pipeline_loads_every_tensor_of_the_folder(pipe, exported):
    """Strict: each component holds exactly the folder's tensors (nothing missing, left over or re-initialised)."""
    assert isinstance(pipe.scheduler, diffusers.CogVideoXDDIMScheduler)
    for part in ("transformer", "vae", "text_encoder"):
        state, files = getattr(pipe, part).state_dict(), _file_tensors(exported / part)
        assert set(files) <= set(state), part
        assert all(torch.equal(state[k], v) for k, v in files.items()), part
        loaded = {state[k].data_ptr() for k in files}
        # what the files do not name must share a loaded tensor's memory (T5's tied input embedding)
        assert all(v.data_ptr() in loaded for k, v in state.items() if k not in files), part


def test_tokenizer_gives_cogvid_ids(pipe, ours):
    captions = [
        *PROMPTS,
        "a small green triangle slides to the left",
        "A big Blue hexagon, moving left!",  # words the tokenizer never saw
        "a red circle <extra_id_0> moving right",  # a T5 sentinel: this small T5 has no row for it
        "a red circle moving right and then a blue square moving up and then a green one moving down",  # truncated
    ]

    def ids(tokenizer):
        kwargs = {"padding": "max_length", "max_length": 16, "truncation": True, "add_special_tokens": True}
        return tokenizer(captions, **kwargs).input_ids

    theirs, mine = ids(pipe.tokenizer), ids(ours.text_encoder.tokenizer)
    assert theirs == mine
    vocab = pipe.text_encoder.config.vocab_size
    assert len(pipe.tokenizer) <= vocab and max(max(row) for row in theirs) < vocab
    assert all(pipe.tokenizer.unk_token_id not in row for row in theirs[:3])  # the captions' words are in it
    assert pipe.tokenizer.unk_token_id in theirs[3]


@pytest.fixture(scope="module")
def videos(pipe, ours):
    """{prompt: (diffusers latents, diffusers frames, cogvid latents, cogvid frames)}: latents scaled (1, t, c, h, w)
    and frames (9, 3, 64, 64) in [0, 1]."""
    out = {}
    for prompt in PROMPTS:
        common = {
            "prompt": prompt,
            "negative_prompt": "",
            "num_inference_steps": STEPS,
            "guidance_scale": GUIDANCE,
            "use_dynamic_cfg": False,
            "max_sequence_length": 16,  # the 2B sin-cos layout needs the text length exactly
        }
        latents = pipe(**common, generator=torch.Generator().manual_seed(SEED), output_type="latent").frames
        frames = pipe(**common, generator=torch.Generator().manual_seed(SEED), output_type="pt").frames[0]
        result = ours.generate(prompt, seed=SEED, negative_prompt="")
        our_latents = result.latents.permute(0, 2, 1, 3, 4) * ours.model_cfg.scale_factor
        our_frames = (result.video / 2 + 0.5).clamp(0, 1).permute(1, 0, 2, 3)
        out[prompt] = (latents, frames, our_latents, our_frames)
    return out


@pytest.mark.parametrize("prompt", PROMPTS)
def test_diffusers_makes_cogvids_video(videos, prompt):
    latents, frames, our_latents, our_frames = videos[prompt]
    assert frames.shape == our_frames.shape == (9, 3, 64, 64)
    latent_diff, pixel_diff = (latents - our_latents).abs().max(), (frames - our_frames).abs().max()
    print(f"{prompt!r}: {STEPS} steps, guidance {GUIDANCE}: latents {latent_diff:.2e}, pixels {pixel_diff:.2e}")
    assert latent_diff <= LATENT_TOL and pixel_diff <= PIXEL_TOL
    # a video worth comparing: most pixels inside (0, 1), not clamped, and frames that change
    assert ((frames > 0) & (frames < 1)).float().mean() > 0.5
    assert (frames[1:] - frames[:-1]).abs().max() > 0.05
    as_uint8 = [np.round(f.numpy() * 255).astype(np.int16) for f in (frames, our_frames)]
    assert np.abs(as_uint8[0] - as_uint8[1]).max() <= 1


def test_the_prompt_matters(videos):
    (first, *_), (second, *_) = (videos[p] for p in PROMPTS)
    assert (first - second).abs().max() > 0.1  # the text reaches the video: not a prompt-blind constant
