"""SAT <-> diffusers key maps, checked inside diffusers itself (CPU, float32).

* SAT -> diffusers -> SAT is bit-identical for tiny configs of all five variants (transformer and VAE).
* The exported transformer loads strictly into diffusers' `CogVideoXTransformer3DModel` and gives cogvid's
  backbone output on the same inputs; the fixture's SAT checkpoint gives the original code's `dit_forward` output.
* The exported VAE decodes like cogvid's VAE with the same chunking (diffusers' latent pairs = SAT v1.0's chunks).

Tolerance note: diffusers builds its final `norm_out` LayerNorm with the config's `norm_eps` (1e-5, right for every
block norm) where SAT's `final_layer.norm_final` uses 1e-6. That is part of diffusers' architecture, not of the
weights, so outputs differ by up to ~2e-5 (|out| ~ 4). Each parity test therefore checks twice: the model as
diffusers builds it (tolerance 5e-5), and the same model with that one epsilon set to SAT's (<= 1e-5).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import diffusers
import pytest
import torch
from conftest import FIXTURE, reference

import cogvid
from cogvid.interop.keymap import Side
from cogvid.interop.transformer_map import (
    diffusers_transformer_config,
    rebuild_sat_tensor,
    sat_transformer_shapes,
    transformer_key_map,
)
from cogvid.interop.vae_map import diffusers_vae_config, vae_key_map
from cogvid.models.dit import DiffusionTransformer
from cogvid.models.vae import CausalVideoVAE, decode_chunks
from cogvid.sat.checkpoint import read_sat_state_dict, read_sat_vae_state_dict
from cogvid.utils.lazy_tensors import TensorSource

VARIANTS = ("2b", "5b", "5b_i2v", "1.5_5b", "1.5_5b_i2v")
# Tiny numbers for every variant: d_head 64 as released (RoPE splits 16/24/24), 2 layers.
TINY = ["hidden_size=128", "num_layers=2", "num_attention_heads=2", "time_embed_dim=32", "text_length=8"]
TINY += ["text_hidden_size=32", "dtype=fp32", "vae.ch=32", "vae.ch_mult=[1,1,1,1]", "vae.num_res_blocks=1"]
GRID_V10 = ["num_frames=9", "latent_height=6", "latent_width=8"]  # tokens (3, 3, 4)
GRID_V15 = ["num_frames=17", "latent_height=8", "latent_width=10"]  # latents (5 -> pad 6, 8, 10): tokens (3, 4, 5)
EXTRA = {"1.5_5b_i2v": ["ofs_embed_dim=32"]}
NORM_OUT_EPS_SAT = 1e-6


TORCH_THREADS = 1  # tiny tensors: extra intra-op threads only spin (3-6x slower on a busy 2-core machine)


def tiny_model_cfg(variant: str, *extra: str):
    grid = GRID_V15 if variant.startswith("1.5") else GRID_V10
    overrides = [f"model.{o}" for o in (*TINY, *grid, *EXTRA.get(variant, ()), *extra)]
    return cogvid.compose([f"model={variant}", *overrides]).model


@torch.no_grad()
def random_dit(cfg, seed: int = 0) -> DiffusionTransformer:
    """Every weight random (the default init zeroes the adaLN linears); SAT's fixed tables left as built."""
    torch.manual_seed(seed)
    model = DiffusionTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("pos_embedding") and not param.requires_grad:
            continue
        noise = torch.randn(param.shape, generator=gen)
        if param.ndim >= 2:
            param.copy_(noise / math.sqrt(param[0].numel()))
        else:
            param.copy_((0.1 * noise) if name.endswith("bias") else (1 + 0.1 * noise))
    if hasattr(model.transformer, "position_embeddings"):
        model.transformer.position_embeddings.weight.zero_()  # unused by SAT; diffusers has no place for it
    return model


def to_diffusers_state(cfg, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    targets, report = transformer_key_map(cfg).plan(TensorSource.from_tensors(state), Side.sat)
    assert not report.unmapped
    return {t.name: t.materialize() for t in targets}


def to_sat_state(cfg, state: dict[str, torch.Tensor]):
    keymap = transformer_key_map(cfg)
    rebuild = [k for k in sat_transformer_shapes(cfg) if keymap.target_name(k, Side.sat) == []]
    targets, report = keymap.plan(
        TensorSource.from_tensors(state),
        Side.diffusers,
        rebuild=lambda k: rebuild_sat_tensor(cfg, k),
        rebuild_keys=rebuild,
    )
    assert not report.unmapped
    return {t.name: t.materialize() for t in targets}, report


def diffusers_transformer(cfg, state):
    model = diffusers.CogVideoXTransformer3DModel.from_config(diffusers_transformer_config(cfg)).eval()
    model.load_state_dict(state, strict=True)
    return model


def rotary(model, t: int, h: int, w: int):
    """The RoPE tables diffusers' own pipeline computes for a latent (t, h, w)."""
    if not model.config.use_rotary_positional_embeddings:
        return None
    host = SimpleNamespace(vae_scale_factor_spatial=8, transformer=model)
    return diffusers.CogVideoXPipeline._prepare_rotary_positional_embeddings(host, h * 8, w * 8, t, "cpu")


def inputs(cfg, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    t = (cfg.num_frames - 1) // cfg.time_compressed_rate + 1
    t += t % cfg.patch_size_t  # 1.5 needs an even latent count, as diffusers' pipeline pads it
    x = torch.randn(2, t, cfg.in_channels, cfg.latent_height, cfg.latent_width, generator=gen)
    context = torch.randn(2, cfg.text_length, cfg.text_hidden_size, generator=gen)
    return x, torch.tensor([999.0, 437.0]), context


@torch.no_grad()
def diffusers_forward(model, x, timesteps, context, ofs=None):
    t, h, w = x.shape[1], x.shape[3], x.shape[4]
    kwargs = {"ofs": torch.full((x.shape[0],), ofs)} if ofs is not None else {}
    return model(
        hidden_states=x,
        encoder_hidden_states=context,
        timestep=timesteps,
        image_rotary_emb=rotary(model, t, h, w),
        return_dict=False,
        **kwargs,
    )[0]


def assert_parity(model, expected, x, timesteps, context, ofs=None):
    """As diffusers builds it (norm_out eps 1e-5) within 5e-5; with SAT's 1e-6 there, within 1e-5."""
    out = diffusers_forward(model, x, timesteps, context, ofs)
    assert (out - expected).abs().max() <= 5e-5
    model.norm_out.norm.eps = NORM_OUT_EPS_SAT
    out = diffusers_forward(model, x, timesteps, context, ofs)
    assert (out - expected).abs().max() <= 1e-5


# ------------------------------------------------------------------------------------------------------------
# Transformer


@pytest.mark.parametrize("variant", VARIANTS)
def test_transformer_round_trip_and_diffusers_parity(variant):
    cfg = tiny_model_cfg(variant)
    model = random_dit(cfg)
    sat = {k: v.clone() for k, v in model.state_dict().items()}

    exported = to_diffusers_state(cfg, sat)
    back, report = to_sat_state(cfg, exported)
    assert back.keys() == sat.keys()
    for key, value in sat.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    dropped = {k for k in sat if transformer_key_map(cfg).target_name(k, Side.sat) == []}
    assert {k for k, _ in report.rebuilt} == dropped

    x, timesteps, context = inputs(cfg)
    ofs = 2.0 if cfg.ofs_embed_dim else None
    with torch.no_grad():
        expected = model(x, timesteps, context, ofs=ofs)
    assert_parity(diffusers_transformer(cfg, exported), expected, x, timesteps, context, ofs)


def test_key_map_covers_fused_and_split_tensors():
    cfg = tiny_model_cfg("5b_i2v")
    keymap = transformer_key_map(cfg)
    assert keymap.target_name("transformer.layers.3.attention.query_key_value.weight", Side.sat) == [
        "transformer_blocks.3.attn1.to_q.weight",
        "transformer_blocks.3.attn1.to_k.weight",
        "transformer_blocks.3.attn1.to_v.weight",
    ]
    assert keymap.target_name("mixins.adaln_layer.adaLN_modulations.1.1.bias", Side.sat) == [
        "transformer_blocks.1.norm1.linear.bias",
        "transformer_blocks.1.norm2.linear.bias",
    ]
    assert keymap.target_name("mixins.pos_embed.pos_embedding", Side.sat) == ["patch_embed.pos_embedding"]
    assert transformer_key_map(tiny_model_cfg("2b")).target_name("mixins.pos_embed.pos_embedding", Side.sat) == []
    assert keymap.target_name("transformer_blocks.0.attn1.norm_k.weight", Side.diffusers) == [
        "mixins.adaln_layer.key_layernorm_list.0.weight"
    ]


def test_adaln_chunks_regroup_video_then_text():
    """SAT chunk c of layer 0 lands where diffusers' LayerNormZero reads it (as SAT's `convert_weight_sat2hf.py`)."""
    cfg = tiny_model_cfg("5b")
    sat = {k: torch.zeros(s) for k, s in sat_transformer_shapes(cfg).items()}
    d = cfg.hidden_size
    sat["mixins.adaln_layer.adaLN_modulations.0.1.bias"] = torch.arange(12.0).repeat_interleave(d)
    out = to_diffusers_state(cfg, sat)
    norm1 = out["transformer_blocks.0.norm1.linear.bias"].reshape(6, d)[:, 0]
    norm2 = out["transformer_blocks.0.norm2.linear.bias"].reshape(6, d)[:, 0]
    assert norm1.tolist() == [0, 1, 2, 6, 7, 8] and norm2.tolist() == [3, 4, 5, 9, 10, 11]


def test_fixture_checkpoint_gives_the_original_output_in_diffusers():
    cfg = cogvid.compose(["model=tiny"]).model
    state, _ = read_sat_state_dict(FIXTURE / "dit_ckpt")
    exported = to_diffusers_state(cfg, state)
    ref = reference("dit_forward")
    assert_parity(diffusers_transformer(cfg, exported), ref["out"], ref["x"], ref["timesteps"], ref["context"])
    # and back: the original SAT tensors bit for bit, the dropped sin-cos table rebuilt as SAT computed it
    back, _ = to_sat_state(cfg, exported)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], v) for k, v in state.items())


# ------------------------------------------------------------------------------------------------------------
# VAE


def test_vae_round_trip_and_decode_parity():
    cfg = cogvid.compose(["model=tiny"]).model
    sat = read_sat_vae_state_dict(FIXTURE / "vae" / "3d-vae.pt")
    keymap = vae_key_map(len(cfg.vae.ch_mult))
    targets, report = keymap.plan(TensorSource.from_tensors(sat), Side.sat, dtype=torch.float32)
    exported = {t.name: t.materialize() for t in targets}
    assert keymap.target_name("decoder.up.0.block.0.nin_shortcut.weight", Side.sat) == [
        "decoder.up_blocks.3.resnets.0.conv_shortcut.weight"
    ]
    back_targets, _ = keymap.plan(TensorSource.from_tensors(exported), Side.diffusers)
    back = {t.name: t.materialize() for t in back_targets}
    assert back.keys() == sat.keys() and all(torch.equal(back[k], v) for k, v in sat.items())

    vae = diffusers.AutoencoderKLCogVideoX.from_config(diffusers_vae_config(cfg)).eval()
    vae.load_state_dict(exported, strict=True)
    ours = CausalVideoVAE.from_config(cfg.vae).eval()
    ours.load_state_dict(sat, strict=True)
    z = reference("vae_io")["chunk_latent_unscaled"]  # 5 latent frames: chunks [0:3], [3:5] on both sides
    with torch.no_grad():
        theirs = vae.decode(z).sample
        mine = ours._decode_in_chunks(z, decode_chunks("v1_0", z.shape[2]))
    assert theirs.shape == mine.shape == (1, 3, 17, 24, 32)
    assert (theirs - mine).abs().max() <= 1e-5  # same float32 math; measured ~1e-6
    assert (mine - reference("vae_io")["chunk_decoded"]).abs().max() <= 1e-5
