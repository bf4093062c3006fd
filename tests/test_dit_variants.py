"""DiT variants without a fixture from the original code: 5B, 5B-I2V, 1.5-5B, 1.5-5B-I2V (and 2B alongside).

Expected values come from the original (the released configs, SAT `dit_video_concat.py`, `lora2.py`). They are
derived again here: hand formulas, index arithmetic written out, and a float64 reference forward over the state dict
(`reference_forward`). The code under test is not used to produce them. Models are tiny overrides of the real
variant configs (hidden 128, 2 layers, 2 heads, so d_head is 64 as in the released models).
"""

from __future__ import annotations

import functools
import math
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import cogvid
from cogvid.models import dit as dit_module
from cogvid.models.dit import DiffusionTransformer
from cogvid.models.lora import LoraLinear
from cogvid.models.positions import RotaryPositionEmbedding
from cogvid.utils.errors import CogvidError

FIXTURE_KEYS = Path(__file__).parent / "fixtures" / "sat_tiny_2b" / "keys.txt"
PREFIX = "model.diffusion_model."
VARIANTS = ("2b", "5b", "5b_i2v", "1.5_5b", "1.5_5b_i2v")
HEAD_DIM = 64

# Tiny overrides shared by every variant. ofs_embed_dim equals time_embed_dim, as in the real 1.5-I2V config.
TINY = {
    "hidden_size": 128,
    "num_layers": 2,
    "num_attention_heads": 2,
    "time_embed_dim": 32,
    "ofs_embed_dim": None,
    "text_length": 8,
    "text_hidden_size": 32,
    "dtype": "fp32",
}
# Table grids: v1.0 9 frames -> 3 latents, 6x8 latent -> tokens (3, 3, 4); 1.5: 17 frames, 8x10 -> (5, 4, 5).
TINY_V10 = {"num_frames": 9, "latent_height": 6, "latent_width": 8}
TINY_V15 = {"num_frames": 17, "latent_height": 8, "latent_width": 10}
TINY_BY_VARIANT = {
    "2b": TINY_V10,
    "5b": TINY_V10,
    "5b_i2v": TINY_V10,
    "1.5_5b": TINY_V15,
    "1.5_5b_i2v": {**TINY_V15, "ofs_embed_dim": 32},
}


# ------------------------------------------------------------------------------------------------------------
# Building tiny models


TORCH_THREADS = 1  # tiny tensors: extra intra-op threads only spin (3-6x slower on a busy 2-core machine)


@functools.cache
def tiny_cfg(variant: str, *extra: str):
    """Compose `model=<variant>` with the tiny numbers; `extra`: "key=value" model overrides, "mode=lora"."""
    values = {**TINY, **TINY_BY_VARIANT[variant]}
    modes = []
    for item in extra:
        key, value = item.split("=", 1)
        if key == "mode":
            modes.append(item)
        else:
            values[key] = value
    overrides = [f"model.{k}={'null' if v is None else v}" for k, v in values.items()]
    return cogvid.compose([f"model={variant}", *modes, *overrides]).model


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights as in the SAT fixture: matrices N(0, 1/fan_in), norm scales 1 + 0.1 N, biases 0.1 N.

    The default init zeroes every adaLN linear, which would hide the time, ofs and modulation paths.
    Fixed tables (the 2B sin-cos `pos_embedding`, RoPE buffers) are left alone.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if not param.requires_grad and name.endswith("pos_embedding"):
            continue
        noise = torch.randn(param.shape, generator=gen)
        if name.endswith("pos_embedding"):
            param.copy_(0.5 * noise)
        elif param.ndim >= 2:  # Linear, Conv2d, LoRA matrices: fan_in = the features of one output row
            param.copy_(noise / math.sqrt(param[0].numel()))
        elif name.endswith("bias"):
            param.copy_(0.1 * noise)
        else:
            param.copy_(1 + 0.1 * noise)
    return model


def build(variant: str, *extra: str, seed: int = 0) -> DiffusionTransformer:
    torch.manual_seed(seed)
    return randomize_(DiffusionTransformer(tiny_cfg(variant, *extra)), seed).eval()


@functools.cache
def shared(variant: str) -> DiffusionTransformer:
    """`build(variant)` once per session, for tests that neither change the model nor hook it."""
    return build(variant)


def make_inputs(model: DiffusionTransformer, t: int, h: int, w: int, batch: int = 2, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    x = torch.randn(batch, t, cfg.in_channels, h, w, generator=gen)
    timesteps = torch.tensor([999.0, 437.0, 12.0][:batch])
    context = torch.randn(batch, cfg.text_length, cfg.text_hidden_size, generator=gen)
    return x, timesteps, context


def video_index(t: int, row: int, col: int, grid_h: int, grid_w: int) -> int:
    """Video tokens are frame-major, then row-major (SAT's patch embedding)."""
    return (t * grid_h + row) * grid_w + col


# ------------------------------------------------------------------------------------------------------------
# The original written out again: RoPE angles and rotation, patchify / unpatchify, the full forward


def reference_pair_angles(grid: tuple[int, int, int], head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """(t*h*w, head_dim/2) float64, an angle per rotated pair: [t (d/8) ; row (3d/16) ; col (3d/16)]."""
    dims = (head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3)
    positions = torch.cartesian_prod(*(torch.arange(n, dtype=torch.float64) for n in grid)).reshape(-1, 3)
    parts = []
    for axis, d in enumerate(dims):
        freqs = torch.tensor([theta ** (-2 * j / d) for j in range(d // 2)], dtype=torch.float64)
        parts.append(positions[:, axis : axis + 1] * freqs)
    return torch.cat(parts, dim=1)


def reference_rotate(x: torch.Tensor, pair_angles: torch.Tensor) -> torch.Tensor:
    """Rotate each adjacent pair (x_2k, x_2k+1), read as the complex number x_2k + i x_2k+1, by its angle."""
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    turned = z * torch.polar(torch.ones_like(pair_angles), pair_angles)
    return torch.view_as_real(turned).reshape(x.shape)


def reference_patchify(x: torch.Tensor, p_t: int, p: int) -> torch.Tensor:
    """(b, T, C, h, w) -> (b, T' h' w', C p_t p p); token (t', h', w'), features (c, o, p, q)."""
    b, t, c, h, w = x.shape
    x = x.reshape(b, t // p_t, p_t, c, h // p, p, w // p, p)  # b t' o c h' pp w' qq
    return x.permute(0, 1, 4, 6, 3, 2, 5, 7).reshape(b, (t // p_t) * (h // p) * (w // p), c * p_t * p * p)


def reference_unpatchify(tokens: torch.Tensor, grid: tuple[int, int, int], c: int, p_t: int, p: int):
    """Inverse of reference_patchify: feature (c, o, pp, qq) of token (t', h', w') goes to
    frame t' p_t + o, channel c, row h' p + pp, column w' p + qq."""
    t, h, w = grid
    x = tokens.reshape(tokens.shape[0], t, h, w, c, p_t, p, p)  # b t' h' w' c o pp qq
    return x.permute(0, 1, 5, 4, 2, 6, 3, 7).reshape(tokens.shape[0], t * p_t, c, h * p, w * p)


def reference_sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """SAT's timestep sinusoid: [cos(t f_k) ; sin(t f_k)], f_k = exp(-ln(10000) k / (dim/2)).

    In float32 as SAT computes it: at t = 999 one ulp in a frequency already moves the output by ~3e-5.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float().reshape(-1, 1) * freqs
    return torch.cat([args.cos(), args.sin()], dim=1).double()


def reference_forward(model: DiffusionTransformer, x, timesteps, context, ofs=None) -> torch.Tensor:
    """SAT `DiffusionTransformer.forward` and `AdaLNMixin.layer_forward` step by step over the state dict, in float64.

    The additive table is read as SAT does (`[:N]` of the flattened table) and RoPE angles come from each
    token's (t, row, col). For v1.0 both agree with SAT only at the configured spatial size, so the v1.0
    variants are compared there.
    """
    cfg = model.cfg
    sd = {k: v.double() for k, v in model.state_dict().items()}
    dim, n_heads = cfg.hidden_size, cfg.num_attention_heads
    head_dim = dim // n_heads
    p, p_t, c_out = cfg.patch_size, cfg.patch_size_t, cfg.out_channels
    b, t, _, h, w = x.shape
    grid = (t // p_t, h // p, w // p)
    table_hw = (cfg.latent_height // p, cfg.latent_width // p)
    flat_tables = "mixins.pos_embed.pos_embedding" in sd or cfg.generation.value == "v1_0"
    assert not flat_tables or grid[1:] == table_hw, "flattened tables are only right at the configured size"
    x, context = x.double(), context.double()
    n_txt = context.shape[1]

    def linear(v, name):
        return v @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    def norm(v, name, eps):
        return F.layer_norm(v, v.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)

    def mlp2(v, name):  # Linear, SiLU, Linear
        return linear(F.silu(linear(v, f"{name}.0")), f"{name}.2")

    def modulate(v, shift, scale):
        return v * (1 + scale[:, None]) + shift[:, None]

    # Time embedding of width D, plus the ofs embedding.
    emb = mlp2(reference_sinusoid(timesteps, dim), "time_embed")
    if ofs is not None:
        emb = emb + mlp2(reference_sinusoid(torch.as_tensor(ofs).reshape(-1), cfg.ofs_embed_dim), "ofs_embed")
    # Patches; a Conv2d weight [D, C, p, p] flattens to the same (c, p, q) feature order.
    proj = sd["mixins.patch_embed.proj.weight"].reshape(dim, -1)
    video = reference_patchify(x, p_t, p) @ proj.T + sd["mixins.patch_embed.proj.bias"]
    hidden = torch.cat([linear(context, "mixins.patch_embed.text_proj"), video], dim=1)
    # Additive table over [text ; video].
    if "mixins.pos_embed.pos_embedding" in sd:
        hidden = hidden + sd["mixins.pos_embed.pos_embedding"][:, : hidden.shape[1]]
    angles = reference_pair_angles(grid, head_dim) if cfg.pos_embed.value == "rope" else None

    # The AdaLN blocks.
    for i in range(cfg.num_layers):
        layer = f"transformer.layers.{i}"
        mod = linear(F.silu(emb), f"mixins.adaln_layer.adaLN_modulations.{i}.1").chunk(12, dim=1)
        txt, vid = hidden[:, :n_txt], hidden[:, n_txt:]
        a = torch.cat(
            [
                modulate(norm(txt, f"{layer}.input_layernorm", 1e-5), mod[6], mod[7]),
                modulate(norm(vid, f"{layer}.input_layernorm", 1e-5), mod[0], mod[1]),
            ],
            dim=1,
        )
        qkv = linear(a, f"{layer}.attention.query_key_value")
        q, k, v = (part.reshape(b, -1, n_heads, head_dim).transpose(1, 2) for part in qkv.split(dim, dim=-1))
        q = norm(q, f"mixins.adaln_layer.query_layernorm_list.{i}", 1e-6)
        k = norm(k, f"mixins.adaln_layer.key_layernorm_list.{i}", 1e-6)
        if angles is not None:  # video tokens only
            q = torch.cat([q[:, :, :n_txt], reference_rotate(q[:, :, n_txt:], angles)], dim=2)
            k = torch.cat([k[:, :, :n_txt], reference_rotate(k[:, :, n_txt:], angles)], dim=2)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
        att = linear((weights @ v).transpose(1, 2).reshape(b, -1, dim), f"{layer}.attention.dense")
        vid = vid + mod[2][:, None] * att[:, n_txt:]
        txt = txt + mod[8][:, None] * att[:, :n_txt]
        m = torch.cat(
            [
                modulate(norm(txt, f"{layer}.post_attention_layernorm", 1e-5), mod[9], mod[10]),
                modulate(norm(vid, f"{layer}.post_attention_layernorm", 1e-5), mod[3], mod[4]),
            ],
            dim=1,
        )
        m = F.gelu(linear(m, f"{layer}.mlp.dense_h_to_4h"), approximate="tanh")
        m = linear(m, f"{layer}.mlp.dense_4h_to_h")
        vid = vid + mod[5][:, None] * m[:, n_txt:]
        txt = txt + mod[11][:, None] * m[:, :n_txt]
        hidden = torch.cat([txt, vid], dim=1)

    # Final LayerNorm, final layer on the video tokens, unpatchify.
    hidden = norm(hidden, "transformer.final_layernorm", 1e-5)
    shift, scale = linear(F.silu(emb), "mixins.final_layer.adaLN_modulation.1").chunk(2, dim=1)
    out = modulate(norm(hidden[:, n_txt:], "mixins.final_layer.norm_final", 1e-6), shift, scale)
    return reference_unpatchify(linear(out, "mixins.final_layer.linear"), grid, c_out, p_t, p)


# ------------------------------------------------------------------------------------------------------------
# 1. RoPE


def rope_tables(model: DiffusionTransformer, grid):
    return model.mixins["pos_embed"].cos_sin(grid, torch.device("cpu"))


@pytest.mark.parametrize("variant", ["5b", "1.5_5b"])
@pytest.mark.parametrize("hidden", [128, 64])  # d_head 64 (the real one), 32 (split 8, 12, 12)
def test_rope_axis_split(variant, hidden):
    """Only the first d/4 dims move with t, the next 3d/8 with the row, the last 3d/8 with the column."""
    model = DiffusionTransformer(tiny_cfg(variant, f"hidden_size={hidden}"))
    d = hidden // 2
    grid = model.mixins["pos_embed"].grid
    _, sin = rope_tables(model, grid)
    assert sin.shape == (grid[0] * grid[1] * grid[2], d)
    bounds = {0: (0, d // 4), 1: (d // 4, d // 4 + 3 * d // 8), 2: (d // 4 + 3 * d // 8, d)}
    assert bounds[2][1] - bounds[2][0] == 3 * d // 8
    for axis, (lo, hi) in bounds.items():
        pos = [0, 0, 0]
        pos[axis] = 1
        row = sin[video_index(*pos, grid[1], grid[2])]
        moving = torch.zeros(d, dtype=torch.bool)
        moving[lo:hi] = True
        assert (row[moving] != 0).all(), f"axis {axis}: dims {lo}:{hi} should rotate"
        assert (row[~moving] == 0).all(), f"axis {axis}: only dims {lo}:{hi} should rotate"


@pytest.mark.parametrize("variant", ["5b", "1.5_5b"])
def test_rope_pairs_are_interleaved(variant):
    """Each angle is used twice in a row: [a0, a0, a1, a1, ...] (GPT-J pairs, not NeoX halves)."""
    model = DiffusionTransformer(tiny_cfg(variant))
    cos, sin = rope_tables(model, model.mixins["pos_embed"].grid)
    torch.testing.assert_close(cos[:, 0::2], cos[:, 1::2], rtol=0, atol=0)
    torch.testing.assert_close(sin[:, 0::2], sin[:, 1::2], rtol=0, atol=0)
    assert not torch.equal(sin[:, 0], sin[:, 2]), "consecutive pairs must carry different frequencies"


@pytest.mark.parametrize("variant", ["5b", "1.5_5b"])
def test_rope_hand_computed_angles(variant):
    """Token (t=2, row=1, col=3): one temporal, one row and one column dim against theta^(-2j/d) by hand."""
    model = DiffusionTransformer(tiny_cfg(variant))
    grid = model.mixins["pos_embed"].grid
    cos, sin = rope_tables(model, grid)
    token = video_index(2, 1, 3, grid[1], grid[2])
    checks = [  # (dim index in the 64-vector, expected angle)
        (2 * 3 + 1, 2 * 10000 ** (-6 / 16)),  # temporal part, j = 3 (second of the pair), d_t = 16
        (16 + 2 * 5, 1 * 10000 ** (-10 / 24)),  # row part, j = 5, d_h = 24
        (40 + 2 * 2 + 1, 3 * 10000 ** (-4 / 24)),  # column part, j = 2, d_w = 24
        (40, 3.0),  # column part, j = 0: frequency 1
    ]
    for dim, angle in checks:
        assert cos[token, dim].item() == pytest.approx(math.cos(angle), abs=1e-6), dim
        assert sin[token, dim].item() == pytest.approx(math.sin(angle), abs=1e-6), dim


@pytest.mark.parametrize("variant", ["5b", "1.5_5b"])
def test_rope_rotation_norm_and_relative_position(variant):
    """The rotation keeps norms, and q.k after rotation depends only on the position difference."""
    model = DiffusionTransformer(tiny_cfg(variant))
    grid = model.mixins["pos_embed"].grid
    cos, sin = rope_tables(model, grid)
    n = cos.shape[0]
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, HEAD_DIM, generator=gen, dtype=torch.float64)
    rq = RotaryPositionEmbedding.rotate(q.expand(1, 1, n, HEAD_DIM), cos.double(), sin.double())[0, 0]
    rk = RotaryPositionEmbedding.rotate(k.expand(1, 1, n, HEAD_DIM), cos.double(), sin.double())[0, 0]
    # (the tables are float32, so the rotation is exact only to about 1e-7)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(n), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rk.norm(dim=-1), k.norm().expand(n), rtol=1e-6, atol=1e-6)

    dots = (rq @ rk.T).tolist()  # (query token, key token)
    positions = [(t, r, c) for t in range(grid[0]) for r in range(grid[1]) for c in range(grid[2])]
    by_offset: dict[tuple[int, int, int], list[float]] = {}
    for i, pi in enumerate(positions):
        for j, pj in enumerate(positions):
            offset = (pi[0] - pj[0], pi[1] - pj[1], pi[2] - pj[2])
            by_offset.setdefault(offset, []).append(dots[i][j])
    for offset, values in by_offset.items():
        assert max(values) - min(values) < 1e-5, offset
    # ... and it does depend on the offset along each axis.
    zero = by_offset[(0, 0, 0)][0]
    for offset in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]:
        assert abs(by_offset[offset][0] - zero) > 1e-3, offset
    assert zero == pytest.approx((q @ k).item(), abs=1e-5)


@pytest.mark.parametrize("variant", ["5b", "5b_i2v", "1.5_5b", "1.5_5b_i2v"])
def test_attention_rotates_video_tokens_only_after_qk_norm(variant, monkeypatch):
    """Capture what reaches SDPA: text rows of Q and K are the qk-normed projections, untouched; video rows
    are rotated by the reference angles after the qk LayerNorm; V is never rotated."""
    model = shared(variant)
    # v1.0 at its configured spatial size (where SAT's flat slice is right), 1.5 on a smaller grid
    grid = (2, 3, 4) if model.cfg.patch_size_t == 1 else (2, 2, 3)
    n_txt, n_vid = 8, grid[0] * grid[1] * grid[2]
    layer, adaln = model.transformer.layers[1], model.mixins["adaln_layer"]
    q_norm, k_norm = adaln.query_layernorm_list[1], adaln.key_layernorm_list[1]
    x = torch.randn(2, n_txt + n_vid, 128, generator=torch.Generator().manual_seed(4))
    captured = {}
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        captured.update(q=q, k=k, v=v)
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(dit_module.F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        layer.attention(x, q_norm, k_norm, n_txt, rope_tables(model, grid))

    w, bias = layer.attention.query_key_value.weight, layer.attention.query_key_value.bias
    qkv = (x @ w.T + bias).split(128, dim=-1)
    q, k, v = (part.reshape(2, -1, 2, HEAD_DIM).transpose(1, 2) for part in qkv)
    q = F.layer_norm(q, (HEAD_DIM,), q_norm.weight, q_norm.bias, 1e-6)
    k = F.layer_norm(k, (HEAD_DIM,), k_norm.weight, k_norm.bias, 1e-6)
    angles = reference_pair_angles(grid, HEAD_DIM)
    for name, ref in (("q", q), ("k", k)):
        got = captured[name]
        torch.testing.assert_close(got[:, :, :n_txt], ref[:, :, :n_txt], rtol=0, atol=1e-6)
        rotated = reference_rotate(ref[:, :, n_txt:], angles)
        torch.testing.assert_close(got[:, :, n_txt:].double(), rotated, rtol=0, atol=2e-6)
    torch.testing.assert_close(captured["v"], v, rtol=0, atol=1e-6)


def test_v10_rope_tables_are_state_dict_buffers():
    """v1.0: freqs_sin / freqs_cos [T h' w', 64] for the configured grid, in the state dict; 1.5: none."""
    for variant in ("5b", "5b_i2v"):
        model = DiffusionTransformer(tiny_cfg(variant))
        sd = model.state_dict()
        pair = reference_pair_angles((3, 3, 4), HEAD_DIM).repeat_interleave(2, dim=1)
        for name, fn in (("freqs_cos", torch.cos), ("freqs_sin", torch.sin)):
            table = sd[f"mixins.pos_embed.{name}"]
            assert table.shape == (3 * 3 * 4, HEAD_DIM)
            torch.testing.assert_close(table.double(), fn(pair), rtol=0, atol=1e-6)
        assert not any(name.endswith(("freqs_cos", "freqs_sin")) for name, _ in model.named_parameters())
    for variant in ("1.5_5b", "1.5_5b_i2v"):
        assert not [key for key in DiffusionTransformer(tiny_cfg(variant)).state_dict() if "freqs" in key]


def test_v15_rope_is_sliced_in_3d():
    """1.5: the tables of a smaller grid are the (t, row, col) entries of the full grid's tables."""
    model = DiffusionTransformer(tiny_cfg("1.5_5b"))
    full_grid = model.mixins["pos_embed"].grid
    assert full_grid == (5, 4, 5)
    full_cos, full_sin = rope_tables(model, full_grid)
    small = (2, 2, 3)
    cos, sin = rope_tables(model, small)
    for t in range(small[0]):
        for r in range(small[1]):
            for c in range(small[2]):
                i = video_index(t, r, c, small[1], small[2])
                j = video_index(t, r, c, full_grid[1], full_grid[2])
                assert torch.equal(cos[i], full_cos[j]) and torch.equal(sin[i], full_sin[j]), (t, r, c)
    pair = reference_pair_angles(small, HEAD_DIM).repeat_interleave(2, dim=1)
    torch.testing.assert_close(cos.double(), pair.cos(), rtol=0, atol=1e-6)
    torch.testing.assert_close(sin.double(), pair.sin(), rtol=0, atol=1e-6)


def test_v10_rope_slice_at_configured_size_is_sats_flat_slice():
    """v1.0 at the configured spatial size: the 3-D slice is SAT's `freqs[:seq_len]`, for any frame count."""
    model = DiffusionTransformer(tiny_cfg("5b"))
    sd = model.state_dict()
    for frames in (1, 2, 3):
        cos, sin = rope_tables(model, (frames, 3, 4))
        assert torch.equal(cos, sd["mixins.pos_embed.freqs_cos"][: frames * 12])
        assert torch.equal(sin, sd["mixins.pos_embed.freqs_sin"][: frames * 12])
    with pytest.raises(CogvidError):
        rope_tables(model, (4, 3, 4))


# ------------------------------------------------------------------------------------------------------------
# 2. Patch embedding and unpatchify


def test_v10_conv2d_equals_v15_linear_with_pt1():
    """A 1.0 Conv2d weight reshaped to [D, C*4] is the 1.5 Linear with p_t = 1: same tokens, same output."""
    conv_model = build("5b")
    linear_cfg = ("patch_size_t=1", "num_frames=9", "latent_height=6", "latent_width=8")
    linear_model = DiffusionTransformer(tiny_cfg("1.5_5b", *linear_cfg)).eval()
    sd = {k: v for k, v in conv_model.state_dict().items() if "freqs" not in k}
    sd["mixins.patch_embed.proj.weight"] = sd["mixins.patch_embed.proj.weight"].reshape(128, 16 * 4)
    linear_model.load_state_dict(sd, strict=True)
    for shape in ((3, 6, 8), (2, 6, 8)):
        x, timesteps, context = make_inputs(conv_model, *shape)
        with torch.no_grad():
            tokens_conv = conv_model.mixins["patch_embed"](x, context)
            tokens_linear = linear_model.mixins["patch_embed"](x, context)
            torch.testing.assert_close(tokens_linear, tokens_conv, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(
                linear_model(x, timesteps, context), conv_model(x, timesteps, context), rtol=1e-5, atol=1e-5
            )


def test_v15_patch_features_are_c_o_p_q():
    """With an identity projection, a single 1 at (frame, channel, row, col) lands on token (t', h', w') and
    feature c*8 + o*4 + pp*2 + qq (SAT HEAD's patch embedding)."""
    model = DiffusionTransformer(tiny_cfg("1.5_5b"))
    embed = model.mixins["patch_embed"]
    assert embed.proj.weight.shape == (128, 16 * 8)
    with torch.no_grad():
        embed.proj.weight.copy_(torch.eye(128))
        embed.proj.bias.zero_()
    context = torch.zeros(1, 8, 32)
    grid_h, grid_w = 4, 5
    cases = [  # (t', o, c, h', pp, w', qq)
        (0, 0, 0, 0, 0, 0, 0),
        (0, 1, 0, 0, 0, 0, 0),
        (0, 0, 0, 0, 1, 0, 0),
        (0, 0, 0, 0, 0, 0, 1),
        (0, 0, 1, 0, 0, 0, 0),
        (1, 1, 5, 2, 1, 3, 0),
        (1, 0, 15, 3, 0, 4, 1),
    ]
    for t, o, c, hh, pp, ww, qq in cases:
        x = torch.zeros(1, 4, 16, 8, 10)
        x[0, t * 2 + o, c, hh * 2 + pp, ww * 2 + qq] = 1.0
        with torch.no_grad():
            video = embed(x, context)[0, 8:]
        expected = torch.zeros(2 * grid_h * grid_w, 128)
        expected[video_index(t, hh, ww, grid_h, grid_w), c * 8 + o * 4 + pp * 2 + qq] = 1.0
        assert torch.equal(video, expected), (t, o, c, hh, pp, ww, qq)


@pytest.mark.parametrize("variant,shape", [("5b", (3, 6, 8)), ("1.5_5b", (4, 8, 10)), ("1.5_5b", (2, 4, 6))])
def test_unpatchify_layout(variant, shape):
    """Replace the final layer's output and read where each (token, feature) lands in (b, T, 16, h, w)."""
    model = build(variant)
    p_t = model.cfg.patch_size_t
    t, h, w = shape
    grid = (t // p_t, h // 2, w // 2)
    n_feat = p_t * 4 * 16
    codes = torch.arange(2 * grid[0] * grid[1] * grid[2] * n_feat, dtype=torch.float32)
    codes = codes.reshape(2, -1, n_feat)
    hook = model.mixins["final_layer"].register_forward_hook(lambda module, args, out: codes)
    x, timesteps, context = make_inputs(model, t, h, w)
    with torch.no_grad():
        out = model(x, timesteps, context)
    assert out.shape == (2, t, 16, h, w)
    bb, f, c, row, col = torch.meshgrid(*(torch.arange(n) for n in out.shape), indexing="ij")
    token = ((f // p_t) * grid[1] + row // 2) * grid[2] + col // 2
    feature = ((c * p_t + f % p_t) * 2 + row % 2) * 2 + col % 2
    assert torch.equal(out, codes[bb, token, feature])

    # Round trip: tokens patchified from a latent (reference layout) come back as that latent.
    y = torch.randn(2, t, 16, h, w)
    patches = reference_patchify(y, p_t, 2)
    hook.remove()
    model.mixins["final_layer"].register_forward_hook(lambda module, args, out: patches)
    with torch.no_grad():
        assert torch.equal(model(x, timesteps, context), y)


# ------------------------------------------------------------------------------------------------------------
# 3. State-dict keys of the real variants against the original's key table


VARIANT_TABLE = {  # the released configs
    "2b": dict(dim=1920, layers=30, c_in=16, p_t=1, generation="v1_0", pos="sincos"),
    "5b": dict(dim=3072, layers=42, c_in=16, p_t=1, generation="v1_0", pos="rope"),
    "5b_i2v": dict(dim=3072, layers=42, c_in=32, p_t=1, generation="v1_0", pos="rope", learnable=True),
    "1.5_5b": dict(dim=3072, layers=42, c_in=16, p_t=2, generation="v1_5", pos="rope"),
    "1.5_5b_i2v": dict(dim=3072, layers=42, c_in=32, p_t=2, generation="v1_5", pos="rope", ofs=True),
}


def reference_state_dict(
    dim, layers, c_in, p_t, generation, pos, learnable=False, ofs=False, lora_rank=0, e_t=512, n_txt=226
) -> dict[str, tuple[int, ...]]:
    """Key -> shape, as SAT's checkpoints hold them (LoRA: `lora2.py`'s `matrix_A/B`)."""
    n_video_v10 = 13 * 30 * 45  # the v1.0 table grid
    keys = {
        "time_embed.0.weight": (e_t, dim),
        "time_embed.0.bias": (e_t,),
        "time_embed.2.weight": (e_t, e_t),
        "time_embed.2.bias": (e_t,),
        "mixins.patch_embed.proj.bias": (dim,),
        "mixins.patch_embed.text_proj.weight": (dim, 4096),
        "mixins.patch_embed.text_proj.bias": (dim,),
        "mixins.final_layer.norm_final.weight": (dim,),
        "mixins.final_layer.norm_final.bias": (dim,),
        "mixins.final_layer.linear.weight": (p_t * 2 * 2 * 16, dim),
        "mixins.final_layer.linear.bias": (p_t * 2 * 2 * 16,),
        "mixins.final_layer.adaLN_modulation.1.weight": (2 * dim, e_t),
        "mixins.final_layer.adaLN_modulation.1.bias": (2 * dim,),
        "transformer.final_layernorm.weight": (dim,),
        "transformer.final_layernorm.bias": (dim,),
    }
    if generation == "v1_0":
        keys["mixins.patch_embed.proj.weight"] = (dim, c_in, 2, 2)
    else:
        keys["mixins.patch_embed.proj.weight"] = (dim, c_in * p_t * 2 * 2)
    if ofs:
        keys.update({"ofs_embed.0.weight": (512, 512), "ofs_embed.0.bias": (512,)})
        keys.update({"ofs_embed.2.weight": (512, 512), "ofs_embed.2.bias": (512,)})
    if pos == "sincos" or learnable:
        keys["mixins.pos_embed.pos_embedding"] = (1, n_txt + n_video_v10, dim)
    if pos == "rope":
        keys["transformer.position_embeddings.weight"] = (64, dim)
        if generation == "v1_0":
            keys["mixins.pos_embed.freqs_sin"] = (n_video_v10, 64)
            keys["mixins.pos_embed.freqs_cos"] = (n_video_v10, 64)
    for i in range(layers):
        keys[f"mixins.adaln_layer.adaLN_modulations.{i}.1.weight"] = (12 * dim, e_t)
        keys[f"mixins.adaln_layer.adaLN_modulations.{i}.1.bias"] = (12 * dim,)
        for which in ("query", "key"):
            keys[f"mixins.adaln_layer.{which}_layernorm_list.{i}.weight"] = (64,)
            keys[f"mixins.adaln_layer.{which}_layernorm_list.{i}.bias"] = (64,)
        layer = f"transformer.layers.{i}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            keys[f"{layer}.{norm}.weight"] = (dim,)
            keys[f"{layer}.{norm}.bias"] = (dim,)
        for name, out_features, parts in (("query_key_value", 3 * dim, 3), ("dense", dim, 1)):
            stem = f"{layer}.attention.{name}"
            if lora_rank:
                keys[f"{stem}.original.weight"] = (out_features, dim)
                keys[f"{stem}.original.bias"] = (out_features,)
                for k in range(parts):
                    keys[f"{stem}.matrix_A.{k}"] = (lora_rank, dim)
                    keys[f"{stem}.matrix_B.{k}"] = (dim, lora_rank)
            else:
                keys[f"{stem}.weight"] = (out_features, dim)
                keys[f"{stem}.bias"] = (out_features,)
        keys[f"{layer}.mlp.dense_h_to_4h.weight"] = (4 * dim, dim)
        keys[f"{layer}.mlp.dense_h_to_4h.bias"] = (4 * dim,)
        keys[f"{layer}.mlp.dense_4h_to_h.weight"] = (dim, 4 * dim)
        keys[f"{layer}.mlp.dense_4h_to_h.bias"] = (dim,)
    return keys


@functools.cache
def meta_model(variant: str, *overrides: str) -> DiffusionTransformer:
    with torch.device("meta"):
        return DiffusionTransformer(cogvid.compose([f"model={variant}", *overrides]).model)


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def diff_report(got: dict, expected: dict) -> str:
    missing = sorted(set(expected) - set(got))[:5]
    unexpected = sorted(set(got) - set(expected))[:5]
    wrong = [(k, got[k], expected[k]) for k in sorted(set(got) & set(expected)) if got[k] != expected[k]][:5]
    return f"missing {missing}, unexpected {unexpected}, mis-shaped {wrong}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_matches_the_key_table(variant):
    got = shapes(meta_model(variant))
    expected = reference_state_dict(**VARIANT_TABLE[variant])
    assert got == expected, diff_report(got, expected)


@pytest.mark.parametrize(
    "variant,key,shape",
    [  # the original's literal numbers, independent of the generator above
        ("2b", "mixins.pos_embed.pos_embedding", (1, 17776, 1920)),
        ("2b", "mixins.patch_embed.proj.weight", (1920, 16, 2, 2)),
        ("2b", "mixins.final_layer.linear.weight", (64, 1920)),
        ("5b", "mixins.pos_embed.freqs_sin", (17550, 64)),
        ("5b", "mixins.pos_embed.freqs_cos", (17550, 64)),
        ("5b", "transformer.position_embeddings.weight", (64, 3072)),
        ("5b", "transformer.layers.41.mlp.dense_h_to_4h.weight", (12288, 3072)),
        ("5b", "mixins.adaln_layer.adaLN_modulations.41.1.weight", (36864, 512)),
        ("5b_i2v", "mixins.pos_embed.pos_embedding", (1, 17776, 3072)),
        ("5b_i2v", "mixins.patch_embed.proj.weight", (3072, 32, 2, 2)),
        ("1.5_5b", "mixins.patch_embed.proj.weight", (3072, 128)),
        ("1.5_5b", "mixins.final_layer.linear.weight", (128, 3072)),
        ("1.5_5b_i2v", "mixins.patch_embed.proj.weight", (3072, 256)),
        ("1.5_5b_i2v", "ofs_embed.0.weight", (512, 512)),
        ("1.5_5b_i2v", "ofs_embed.2.bias", (512,)),
    ],
)
def test_state_dict_literal_shapes(variant, key, shape):
    assert shapes(meta_model(variant))[key] == shape


@pytest.mark.parametrize(
    "variant,absent",
    [
        ("2b", ("freqs", "transformer.position_embeddings", "word_embeddings", "ofs_embed")),
        ("5b", ("pos_embed.pos_embedding", "word_embeddings", "ofs_embed")),
        ("1.5_5b", ("freqs", "pos_embed.pos_embedding", "ofs_embed", "word_embeddings")),
        ("1.5_5b_i2v", ("freqs", "pos_embed.pos_embedding", "word_embeddings")),
    ],
)
def test_state_dict_absent_keys(variant, absent):
    assert not [key for key in meta_model(variant).state_dict() if any(a in key for a in absent)]


def test_variant_configs_and_trainability():
    assert meta_model("1.5_5b").cfg.text_length == 224 and meta_model("1.5_5b_i2v").cfg.text_length == 224
    assert meta_model("5b").cfg.text_length == 226
    assert not meta_model("2b").mixins["pos_embed"].pos_embedding.requires_grad  # sin-cos: saved, frozen
    assert meta_model("5b_i2v").mixins["pos_embed"].pos_embedding.requires_grad  # learnable


def read_fixture_keys(section: str) -> dict[str, tuple[int, ...]]:
    """One `### <section>...` block of keys.txt, prefix removed: key -> shape."""
    keys, inside = {}, False
    for line in FIXTURE_KEYS.read_text().splitlines():
        if line.startswith("###"):
            inside = line.startswith(f"### {section}")
            continue
        if inside and line.strip():
            key, shape, _ = line.split("\t")
            keys[key.removeprefix(PREFIX)] = tuple(int(n) for n in shape.strip("()").split(",") if n.strip())
    return keys


def test_lora_keys_match_sat_fixture():
    """mode=lora with the fixture's r=4 gives exactly SAT's LoRA checkpoint keys and shapes."""
    expected = read_fixture_keys("lora_ckpt")
    # per layer: qkv and dense weight/bias move under `.original`, plus 3 + 3 and 1 + 1 matrices
    assert len(expected) == len(read_fixture_keys("dit_ckpt")) + 2 * 8 == 69
    model = DiffusionTransformer(cogvid.compose(["model=tiny", "mode=lora", "model.lora_rank=4"]).model)
    assert shapes(model) == expected, diff_report(shapes(model), expected)
    plain = DiffusionTransformer(cogvid.compose(["model=tiny"]).model)
    assert shapes(plain) == read_fixture_keys("dit_ckpt")


@pytest.mark.parametrize("variant,rank", [("5b", 128), ("5b_i2v", 256), ("1.5_5b", 128)])
def test_lora_keys_real_variants(variant, rank):
    got = shapes(meta_model(variant, "mode=lora", f"model.lora_rank={rank}"))
    expected = reference_state_dict(**VARIANT_TABLE[variant], lora_rank=rank)
    assert got == expected, diff_report(got, expected)


def variant_counts(variant: str) -> tuple[int, int]:
    model = meta_model(variant)
    return sum(p.numel() for p in model.parameters()), len(model.state_dict())


def test_parameter_and_key_counts(record_property):
    """Counts per variant (shown with -s); the parameters are the key table's tensors minus the buffers."""
    rows = []
    for variant in VARIANTS:
        n_params, n_keys = variant_counts(variant)
        expected = reference_state_dict(**VARIANT_TABLE[variant])
        assert n_keys == len(expected)
        assert n_params == sum(math.prod(s) for k, s in expected.items() if "freqs" not in k)
        record_property(f"{variant}_parameters", n_params)
        record_property(f"{variant}_state_dict_keys", n_keys)
        rows.append(f"{variant:>11} {n_params:>15,} {n_keys:>5}")
    print("\n" + "\n".join(rows))


def test_count_params_script(capsys):
    script = Path(__file__).parents[1] / "scripts" / "count_params.py"
    runpy.run_path(str(script), run_name="__main__")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 + len(VARIANTS)
    for variant, line in zip(VARIANTS, lines[2:], strict=True):
        n_params, n_keys = variant_counts(variant)
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[0] == variant and cells[1].startswith(f"{n_params:,}") and cells[2] == str(n_keys), line


# ------------------------------------------------------------------------------------------------------------
# 4. LoRA


def test_lora_scaling_is_alpha_over_r_once():
    model = build("5b", "mode=lora", "lora_rank=4", "lora_alpha=2.0")
    layer = model.transformer.layers[0].attention.query_key_value
    assert isinstance(layer, LoraLinear)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        branch = layer(x) - layer.original(x)
        pairs = list(zip(layer.matrix_A, layer.matrix_B, strict=True))
        by_hand = torch.cat([x @ a.T @ b.T for a, b in pairs], dim=-1)
        torch.testing.assert_close(branch, by_hand * (2.0 / 4), rtol=1e-5, atol=1e-6)
        delta = torch.cat([b @ a for a, b in pairs], dim=0)
        merged = layer.merged().weight
        torch.testing.assert_close(merged, layer.original.weight + delta * 0.5, rtol=1e-6, atol=1e-6)


def test_merge_lora_equals_lora_forward():
    model = build("5b", "mode=lora", "lora_rank=4", "lora_alpha=2.0")
    assert len(model.lora_layers()) == 4 and all(m.matrix_B[0].abs().sum() > 0 for m in model.lora_layers())
    x, timesteps, context = make_inputs(model, 3, 6, 8)
    base = DiffusionTransformer(tiny_cfg("5b")).eval()  # the same weights without the adapters
    sd = model.state_dict()
    base.load_state_dict({k.replace(".original.", "."): v for k, v in sd.items() if ".matrix_" not in k})
    with torch.no_grad():
        lora_out = model(x, timesteps, context)
        base_out = base(x, timesteps, context)
        model.merge_lora_()
        merged_out = model(x, timesteps, context)
    assert (lora_out - base_out).abs().max() > 1e-3, "the LoRA branch should change the output"
    assert (merged_out - lora_out).abs().max() <= 1e-5
    assert not model.lora_layers()
    assert set(model.state_dict()) == set(DiffusionTransformer(tiny_cfg("5b")).state_dict())


# ------------------------------------------------------------------------------------------------------------
# 5. Forward passes


@pytest.mark.parametrize(  # grids the reference below does not cover (it reads v1.0 tables the flat SAT way)
    "variant,shape", [("2b", (2, 4, 6)), ("5b", (1, 4, 6)), ("5b_i2v", (2, 4, 6)), ("1.5_5b", (10, 8, 10))]
)
def test_forward_shape_on_other_grids(variant, shape):
    model = shared(variant)
    x, timesteps, context = make_inputs(model, *shape)
    assert x.shape[2] == (32 if variant.endswith("i2v") else 16)
    ofs = 2.0 if variant == "1.5_5b_i2v" else None
    with torch.no_grad():
        out = model(x, timesteps, context, ofs=ofs)
    assert out.shape == (2, shape[0], 16, shape[1], shape[2])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "variant,shape",
    [
        ("2b", (3, 6, 8)),
        ("5b", (3, 6, 8)),
        ("5b", (2, 6, 8)),
        ("5b_i2v", (3, 6, 8)),
        ("1.5_5b", (4, 8, 10)),
        ("1.5_5b", (2, 4, 6)),
        ("1.5_5b_i2v", (4, 8, 10)),
        ("1.5_5b_i2v", (2, 4, 6)),
    ],
)
def test_forward_matches_the_reference_forward(variant, shape):
    """Each variant at its configured grid, and 1.5 on a smaller one, against reference_forward; H != W."""
    model = shared(variant)
    x, timesteps, context = make_inputs(model, *shape)
    ofs = torch.tensor([2.0]) if variant == "1.5_5b_i2v" else None
    with torch.no_grad():
        out = model(x, timesteps, context, ofs=ofs)
    expected = reference_forward(model, x, timesteps, context, ofs=ofs)
    assert out.shape == expected.shape == (2, shape[0], 16, shape[1], shape[2])
    assert expected.abs().max() > 0.5
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["2b", "5b", "1.5_5b_i2v"])
def test_inference_path_equals_the_training_path(variant):
    """Under no_grad the blocks modulate and add residuals in place; with autograd on they split and re-join the
    sequence. Both are the same arithmetic."""
    model = shared(variant)
    x, timesteps, context = make_inputs(model, 4 if variant.startswith("1.5") else 3, 6, 8)
    ofs = torch.tensor([2.0]) if variant == "1.5_5b_i2v" else None
    with torch.no_grad():
        fast = model(x, timesteps, context, ofs=ofs)
    with torch.enable_grad():
        training = model(x, timesteps, context, ofs=ofs)
    assert training.requires_grad
    torch.testing.assert_close(fast, training.detach(), rtol=1e-6, atol=1e-6)


def test_attention_runs_a_fused_kernel_without_the_score_matrix():
    """SDPA picks its flash kernel on the CPU (no (S, S) scores in memory), as flash / memory-efficient on CUDA."""
    from torch.profiler import ProfilerActivity, profile

    model = shared("5b")
    x, timesteps, context = make_inputs(model, 3, 6, 8)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x, timesteps, context)
    names = {event.key for event in prof.key_averages()}
    assert any("flash_attention" in name for name in names), sorted(names)
    assert not any(name in ("aten::_softmax", "aten::softmax", "aten::bmm") for name in names)


def test_v15_needs_even_latent_frames():
    model = shared("1.5_5b")
    with pytest.raises(ValueError):
        model(*make_inputs(model, 3, 4, 6))


def test_ofs_changes_output_and_is_required():
    model = shared("1.5_5b_i2v")
    x, timesteps, context = make_inputs(model, 2, 4, 6)
    with torch.no_grad():
        out_2 = model(x, timesteps, context, ofs=2.0)
        out_2_tensor = model(x, timesteps, context, ofs=torch.tensor([2.0]))
        out_1 = model(x, timesteps, context, ofs=1.0)
        with pytest.raises(ValueError):
            model(x, timesteps, context)
    assert torch.equal(out_2, out_2_tensor)
    assert (out_2 - out_1).abs().max() > 1e-4


def test_learnable_pos_embed_covers_text_and_trains():
    model = build("5b_i2v")
    pe = model.mixins["pos_embed"].pos_embedding
    assert pe.shape == (1, 8 + 36, 128) and pe.requires_grad
    x, timesteps, context = make_inputs(model, 3, 6, 8)
    with torch.no_grad():
        before = model(x, timesteps, context)
        # a random change to a text row (a constant one would vanish in the LayerNorm that follows)
        pe[0, 3] += torch.randn(128, generator=torch.Generator().manual_seed(7))
        after = model(x, timesteps, context)
    assert (after - before).abs().max() > 1e-4, "the learnable PE must be added to text tokens too"
    model(x, timesteps, context).square().mean().backward()
    assert pe.grad[0, :8].abs().sum() > 0 and pe.grad[0, 8:].abs().sum() > 0


@pytest.mark.parametrize("variant,shape", [("5b_i2v", (3, 6, 8)), ("1.5_5b_i2v", (2, 4, 6))])
def test_gradient_checkpointing_same_outputs_and_grads(variant, shape, monkeypatch):
    calls = []
    original = dit_module.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(dit_module, "checkpoint", counting)
    plain = build(variant).train()
    checkpointed = DiffusionTransformer(tiny_cfg(variant, "checkpoint_activations=true")).train()
    checkpointed.load_state_dict(plain.state_dict())
    x, timesteps, context = make_inputs(plain, *shape)
    weights = torch.randn(2, shape[0], 16, shape[1], shape[2], generator=torch.Generator().manual_seed(6))
    outputs = []
    for model in (plain, checkpointed):
        out = model(x, timesteps, context, ofs=2.0 if variant == "1.5_5b_i2v" else None)
        (out * weights).sum().backward()
        outputs.append(out.detach())
    assert len(calls) == 2, "checkpointing should wrap each of the 2 blocks once"
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-6)
    grads = dict(checkpointed.named_parameters())
    for name, param in plain.named_parameters():
        if param.grad is None:
            assert grads[name].grad is None, name
            continue
        torch.testing.assert_close(grads[name].grad, param.grad, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------------------------
# 6. Time embedding


@pytest.mark.parametrize("variant", ["5b", "1.5_5b_i2v"])
def test_time_and_ofs_sinusoids_are_cos_first(variant):
    """What enters time_embed (width D) and ofs_embed (width ofs_embed_dim) at t = 437, ofs = 2, by hand."""
    model = build(variant)
    seen = {}

    def keep(name):
        def hook(module, args):
            seen[name] = args[0]

        return hook

    model.time_embed.register_forward_pre_hook(keep("time"))
    if model.ofs_embed is not None:
        model.ofs_embed.register_forward_pre_hook(keep("ofs"))
    x, _, context = make_inputs(model, 2, 4, 6, batch=1)
    ofs = 2.0 if variant == "1.5_5b_i2v" else None
    with torch.no_grad():
        model(x, torch.tensor([437.0]), context, ofs=ofs)
    values = [("time", 437.0, 128)] + ([("ofs", 2.0, 32)] if ofs else [])
    for name, t, dim in values:
        half = dim // 2
        freqs = [math.exp(-math.log(10000) * k / half) for k in range(half)]
        by_hand = torch.tensor([math.cos(t * f) for f in freqs] + [math.sin(t * f) for f in freqs])
        assert seen[name].shape == (1, dim)
        torch.testing.assert_close(seen[name][0].double(), by_hand.double(), rtol=0, atol=1e-4)
