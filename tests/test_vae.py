"""The 3-D causal VAE: SAT `3d-vae.pt` keys, the fixture's encode/decode pairs, decode schedules, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cogvid.config.schema import Generation
from cogvid.models import vae as vae_module
from cogvid.models.vae import (
    CausalConv3d,
    CausalVideoVAE,
    FirstFrame,
    decode_chunks,
    decode_tiled,
)
from cogvid.sat.checkpoint import load_sat_vae, read_sat_vae_state_dict
from cogvid.sat.yaml_import import import_sat_config
from cogvid.utils.errors import CogvidError
from cogvid.utils.user_files import safe_torch_load

FIXTURE = Path(__file__).parent / "fixtures" / "sat_tiny_2b"
VAE_PT = FIXTURE / "vae" / "3d-vae.pt"
DIT_PT = FIXTURE / "dit_ckpt" / "1000" / "mp_rank_00_model_states.pt"
TINY = {"ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "z_channels": 16}  # tiny_2b.yaml first_stage_config
TOL = 1e-5


def tiny() -> CausalVideoVAE:
    return CausalVideoVAE.from_config(TINY)


@pytest.fixture(scope="module")
def vae() -> CausalVideoVAE:
    return load_sat_vae(VAE_PT, tiny())


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "vae_io.safetensors")


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def keys_txt_vae() -> dict[str, tuple[int, ...]]:
    """The VAE section of keys.txt: name -> shape."""
    lines = (FIXTURE / "keys.txt").read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("### vae/3d-vae.pt")))
    out = {}
    for line in lines[start + 1 :]:
        if not line.strip() or line.startswith("###"):
            break
        name, shape, _ = line.split("\t")
        out[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(CogvidError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message, message
    return message


# --- keys


def test_state_dict_keys_and_shapes_equal_sat_file():
    own = {k: tuple(v.shape) for k, v in tiny().state_dict().items()}
    sat = safe_torch_load(VAE_PT)["state_dict"]
    sat = {k: tuple(v.shape) for k, v in sat.items() if not k.startswith("loss")}
    assert own == sat
    assert list(own) == list(keys_txt_vae())  # same order as SAT's modules, too
    assert own == keys_txt_vae()


def test_real_size_key_layout():
    """The encoder and decoder keys and shapes of the released config (built on the meta device: no memory)."""
    with torch.device("meta"):
        state = CausalVideoVAE().state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["encoder.conv_in.conv.weight"] == (128, 3, 3, 3, 3)
    assert shapes["encoder.down.1.block.0.nin_shortcut.weight"] == (256, 128, 1, 1, 1)
    assert shapes["encoder.down.3.block.0.nin_shortcut.weight"] == (512, 256, 1, 1, 1)
    assert "encoder.down.3.downsample.conv.weight" not in shapes
    assert shapes["encoder.conv_out.conv.weight"] == (32, 512, 3, 3, 3)
    assert shapes["decoder.conv_in.conv.weight"] == (512, 16, 3, 3, 3)
    assert shapes["decoder.up.3.block.3.norm1.conv_y.conv.weight"] == (512, 16, 1, 1, 1)
    assert shapes["decoder.up.2.block.0.nin_shortcut.weight"] == (256, 512, 1, 1, 1)
    assert shapes["decoder.up.0.block.0.nin_shortcut.weight"] == (128, 256, 1, 1, 1)
    assert "decoder.up.0.upsample.conv.weight" not in shapes
    assert shapes["decoder.up.1.upsample.conv.weight"] == (256, 256, 3, 3)
    assert shapes["decoder.conv_out.conv.weight"] == (3, 128, 3, 3, 3)


def test_time_compressing_levels():
    model = tiny()
    assert [level.downsample.compress_time for level in model.encoder.down[:-1]] == [True, True, False]
    assert model.encoder.down[-1].downsample is None
    assert [model.decoder.up[i].upsample.compress_time for i in (3, 2, 1)] == [True, True, False]
    assert model.decoder.up[0].upsample is None


# --- the fixture's encode/decode pairs (SAT v1.0 on CPU, float32)


@torch.no_grad()
def test_encode_moments(vae, io):
    assert max_diff(vae.encode_moments(io["video"]), io["enc_moments"]) <= TOL


@torch.no_grad()
def test_image_encode_moments(vae, io):
    assert max_diff(vae.encode_moments(io["image"]), io["image_enc_moments"]) <= TOL


@torch.no_grad()
def test_posterior_sample_from_given_noise(vae, io):
    assert max_diff(vae.encode(io["video"], noise=io["enc_sample_noise"]), io["enc_sample"]) <= TOL


@torch.no_grad()
def test_posterior_sample_from_seed(vae, io):
    """SAT drew the noise with the default CPU generator right after `torch.manual_seed(20240006)`."""
    torch.manual_seed(20240006)
    assert max_diff(vae.encode(io["video"]), io["enc_sample"]) <= TOL
    generator = torch.Generator().manual_seed(20240006)
    assert max_diff(vae.encode(io["video"], generator=generator), io["enc_sample"]) <= TOL


@torch.no_grad()
def test_encode_mean(vae, io):
    assert max_diff(vae.encode(io["video"], sample=False), io["enc_moments"][:, :16]) <= TOL


@torch.no_grad()
def test_decode_of_mean(vae, io):
    out = vae.decode(io["enc_moments"][:, :16])
    assert out.shape == (1, 3, 9, 24, 32)
    assert max_diff(out, io["dec_of_mean"]) <= TOL


@torch.no_grad()
def test_single_call_decode(vae, io):
    assert max_diff(vae.decode(io["chunk_latent_unscaled"]), io["full_decoded_same_latent"]) <= TOL


@torch.no_grad()
def test_v1_0_chunked_decode_carries_the_cache(vae, io):
    out = vae.decode_chunked(io["chunk_latent_unscaled"], Generation.v1_0)
    assert max_diff(out, io["chunk_decoded"]) <= TOL
    assert all(conv.cache is None for conv in vae.decoder.causal_convs())
    # Without the carried frames (each chunk decoded alone) the result is different.
    alone = torch.cat([vae.decode(io["chunk_latent_unscaled"][:, :, s:e]) for s, e in ((0, 3), (3, 5))], dim=2)
    assert max_diff(alone, io["chunk_decoded"]) > 1e-2


# --- causal conv cache semantics (SAT `ContextParallelCausalConv3d`)


@torch.no_grad()
def test_causal_conv_cache_read_then_cleared():
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3)
    x = torch.randn(1, 2, 5, 4, 6)
    whole = conv(x)
    first = conv(x[:, :, :3], clear_cache=False)
    assert conv.cache is not None and conv.cache.shape == (1, 2, 2, 4, 6)
    second = conv(x[:, :, 3:])  # clear_cache=True still reads the carry ...
    assert conv.cache is None  # ... and empties it afterwards
    assert max_diff(torch.cat([first, second], dim=2), whole) <= 1e-6
    alone = conv(x[:, :, 3:])  # no carry: frame 3 replicated
    assert max_diff(alone, second) > 1e-3


@torch.no_grad()
def test_causal_conv_pads_by_replicating_frame_zero():
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3)
    x = torch.randn(1, 2, 3, 4, 6)
    padded = torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2)
    expected = torch.nn.functional.conv3d(padded, conv.conv.weight, conv.conv.bias, padding=(0, 1, 1))
    assert max_diff(conv(x), expected) <= 1e-6


@torch.no_grad()
def test_safe_conv_time_slices_are_exact(monkeypatch):
    torch.manual_seed(0)
    conv = CausalConv3d(4, 4)
    x = torch.randn(1, 4, 9, 8, 8)
    whole = conv(x)
    monkeypatch.setattr(vae_module, "SAFE_CONV_BYTES", 1024)
    assert max_diff(conv(x), whole) <= 1e-6


@torch.no_grad()
def test_chunked_decode_clears_cache_after_an_error(vae):
    calls = []

    def fail_on_second_chunk(module, args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")

    handle = vae.decoder.conv_out.register_forward_pre_hook(fail_on_second_chunk)
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            vae.decode_chunked(torch.zeros(1, 16, 7, 1, 2), Generation.v1_0)
    finally:
        handle.remove()
    assert len(calls) == 2
    assert all(conv.cache is None for conv in vae.decoder.causal_convs())


# --- decode schedules and frame counts (SAT `sample_video.py` v1.0, `decode_first_stage` HEAD)


def test_chunk_plans():
    plan = decode_chunks(Generation.v1_0, 13)
    assert [(s, e) for s, e, _ in plan] == [(0, 3), (3, 5), (5, 7), (7, 9), (9, 11), (11, 13)]
    assert decode_chunks(Generation.v1_0, 1) == [(0, 1, FirstFrame.odd)]
    plan = decode_chunks(Generation.v1_5, 21)
    assert [e - s for s, e, _ in plan] == [3] + [2] * 9
    assert [rule for *_, rule in plan] == [FirstFrame.always] + [FirstFrame.never] * 9
    assert all(rule is FirstFrame.never for *_, rule in decode_chunks(Generation.v1_5, 21, head_frame_quirk=True))
    assert [e - s for s, e, _ in decode_chunks(Generation.v1_5, 41)] == [5] + [4] * 9
    assert [e - s for s, e, _ in decode_chunks(Generation.v1_5, 1)] == [1]
    message = one_line_error(decode_chunks, Generation.v1_0, 12)
    assert "odd" in message


@torch.no_grad()
def test_v1_0_chunked_decode_of_13_latents_gives_49_frames(vae):
    z = torch.randn(1, 16, 13, 1, 1)
    assert vae.decode_chunked(z, Generation.v1_0).shape == (1, 3, 49, 8, 8)


@torch.no_grad()
def test_v1_5_decode_frame_counts(vae):
    z = torch.randn(1, 16, 22, 1, 1)  # HEAD samples T = 22 latents and drops latent 0 before decoding
    assert vae.decode_chunked(z, Generation.v1_5).shape[2] == 81  # diffusers-compatible default
    assert vae.decode_chunked(z, Generation.v1_5, head_frame_quirk=True).shape[2] == 84  # HEAD as run at cp_size 1
    assert vae.decode_chunked(z[:, :, 1:], Generation.v1_5, drop_first_latent=False).shape[2] == 81
    z42 = torch.randn(1, 16, 42, 1, 1)
    assert vae.decode_chunked(z42, Generation.v1_5).shape[2] == 161
    assert vae.decode_chunked(z42, Generation.v1_5, head_frame_quirk=True).shape[2] == 164


@torch.no_grad()
def test_v1_5_default_chunking_matches_v1_0_on_its_plan(vae):
    """For 21 latents the first chunk (3) is odd, so 'always' and v1.0's 'odd' rule agree on it."""
    z = torch.randn(1, 16, 7, 1, 2)  # 1.5 plan for 7: n = 3 chunks of 3, 2, 2 = v1.0's plan
    a = vae.decode_chunked(z, Generation.v1_5, drop_first_latent=False)
    b = vae.decode_chunked(z, Generation.v1_0)
    assert max_diff(a, b) <= 1e-6


@torch.no_grad()
def test_single_call_first_frame_rules(vae):
    z = torch.randn(1, 16, 4, 1, 1)
    assert vae.decode(z).shape[2] == 16  # v1.0: even T gets no first-frame handling
    assert vae.decode(z, FirstFrame.always).shape[2] == 13
    assert vae.decode(z[:, :, :3], FirstFrame.never).shape[2] == 12
    assert vae.decode(torch.randn(1, 16, 1, 1, 2)).shape[2] == 1
    assert vae.encode_moments(torch.zeros(1, 3, 17, 8, 8)).shape == (1, 32, 5, 1, 1)


# --- optional spatial tiling


@pytest.mark.parametrize(("tile", "overlap"), [((3, 4), (1, 1)), ((2, 5), (1, 2)), ((4, 3), (0, 0)), ((7, 11), (1, 1))])
def test_tiles_stitch_back_exactly(tile, overlap):
    """With a position-wise 'decoder' every tile agrees on its overlaps, so blending must give the untiled result."""
    z = torch.randn(1, 3, 2, 7, 11)

    def upsample(latents):
        return torch.nn.functional.interpolate(latents, scale_factor=(2.0, 8.0, 8.0), mode="nearest")

    assert max_diff(decode_tiled(z, upsample, tile, overlap, scale=8), upsample(z)) <= 1e-6


@torch.no_grad()
def test_tiled_decode(vae, io):
    z = io["chunk_latent_unscaled"]  # (1, 16, 5, 3, 4)
    untiled = vae.decode_chunked(z)
    assert torch.equal(vae.decode_chunked(z, tile=(3, 4)), untiled)  # one tile: SAT's result
    tiled = vae.decode_chunked(z, tile=(2, 3), tile_overlap=(1, 1))
    assert tiled.shape == untiled.shape and torch.isfinite(tiled).all()
    assert all(conv.cache is None for conv in vae.decoder.causal_convs())


# --- loading and bad input


def test_read_drops_loss_keys_and_engine_prefix(tmp_path):
    state = safe_torch_load(VAE_PT)["state_dict"]
    engine = {f"first_stage_model.{k}": v for k, v in state.items()}
    engine["first_stage_model.loss.logvar"] = torch.zeros(())
    engine["model.diffusion_model.x"] = torch.zeros(1)
    torch.save({"module": engine}, tmp_path / "engine.pt")
    assert read_sat_vae_state_dict(tmp_path / "engine.pt").keys() == state.keys()


def test_load_casts_to_dtype():
    model = load_sat_vae(VAE_PT, tiny(), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and not model.training


def test_missing_file(tmp_path):
    message = one_line_error(load_sat_vae, tmp_path / "3d-vae.pt", tiny())
    assert "does not exist" in message


def test_truncated_file(tmp_path):
    cut = tmp_path / "3d-vae.pt"
    cut.write_bytes(VAE_PT.read_bytes()[:100_000])
    message = one_line_error(load_sat_vae, cut, tiny())
    assert "truncated or corrupt" in message


def test_dit_checkpoint_given_as_vae():
    message = one_line_error(load_sat_vae, DIT_PT, tiny())
    n_vae = len(tiny().state_dict())
    assert f"{n_vae} missing" in message and "unexpected" in message


def test_vae_of_another_size():
    message = one_line_error(load_sat_vae, VAE_PT, CausalVideoVAE.from_config({**TINY, "ch": 64}))
    assert "mis-shaped" in message


def test_from_sat_first_stage_config():
    first_stage = import_sat_config(FIXTURE / "tiny_2b.yaml", "tiny").first_stage
    model = CausalVideoVAE.from_config(first_stage)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in tiny().state_dict().items()}


def test_bad_sizes():
    with pytest.raises(ValueError, match="multiple of 32"):
        CausalVideoVAE(ch=48)
    with pytest.raises(ValueError, match="power of two"):
        CausalVideoVAE(temporal_compress_times=3)
