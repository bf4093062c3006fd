"""The DiT's key map (SAT `model.diffusion_model.*` <-> diffusers `CogVideoXTransformer3DModel`) and its config.

SAT `tools/convert_weight_sat2hf.py`'s map, as rules (see `keymap`): SAT's fused query_key_value is diffusers'
to_q / to_k / to_v; SAT's 12 adaLN chunks per layer (video shift/scale/gate for attention and MLP, then the same six
for text) are diffusers' norm1.linear = chunks 0-2 + 6-8 and norm2.linear = chunks 3-5 + 9-11; the qk LayerNorm
lists become per-block norm_q / norm_k. Tables diffusers computes itself (the 2B sin-cos table, v1.0's RoPE
buffers) and SAT's unused `transformer.position_embeddings` are dropped on export and rebuilt from the config on
import.

Every value of the diffusers config comes from the composed model config; what diffusers cannot express
(no qk-norm, another RoPE theta, different height and width interpolation) is refused rather than approximated.
"""

from __future__ import annotations

import reprlib

import torch

from cogvid.config.schema import Generation, PosEmbed
from cogvid.interop.keymap import KeyMap, Rename, SatOnly, Split
from cogvid.utils.errors import CogvidError

DIFFUSERS_VERSION = "0.42.1"  # the diffusers whose format is written (and tested)
TRANSFORMER_CLASS = "CogVideoXTransformer3DModel"
WEIGHTS_STEM = "diffusion_pytorch_model"

# Which of SAT's 12 adaLN chunks (`AdaLNMixin.layer_forward` order) make diffusers' norm1.linear and norm2.linear.
ADALN_GROUPS = ((0, 1, 2, 6, 7, 8), (3, 4, 5, 9, 10, 11))

TRANSFORMER_RULES = [
    Rename("transformer.final_layernorm.{p}", "norm_final.{p}"),
    Rename("transformer.layers.{i}.input_layernorm.{p}", "transformer_blocks.{i}.norm1.norm.{p}"),
    Rename("transformer.layers.{i}.post_attention_layernorm.{p}", "transformer_blocks.{i}.norm2.norm.{p}"),
    Split(
        "transformer.layers.{i}.attention.query_key_value.{p}",
        (
            "transformer_blocks.{i}.attn1.to_q.{p}",
            "transformer_blocks.{i}.attn1.to_k.{p}",
            "transformer_blocks.{i}.attn1.to_v.{p}",
        ),
        chunks=3,
        groups=((0,), (1,), (2,)),
    ),
    Rename("transformer.layers.{i}.attention.dense.{p}", "transformer_blocks.{i}.attn1.to_out.0.{p}"),
    Rename("transformer.layers.{i}.mlp.dense_h_to_4h.{p}", "transformer_blocks.{i}.ff.net.0.proj.{p}"),
    Rename("transformer.layers.{i}.mlp.dense_4h_to_h.{p}", "transformer_blocks.{i}.ff.net.2.{p}"),
    Rename("mixins.adaln_layer.query_layernorm_list.{i}.{p}", "transformer_blocks.{i}.attn1.norm_q.{p}"),
    Rename("mixins.adaln_layer.key_layernorm_list.{i}.{p}", "transformer_blocks.{i}.attn1.norm_k.{p}"),
    Split(
        "mixins.adaln_layer.adaLN_modulations.{i}.1.{p}",
        ("transformer_blocks.{i}.norm1.linear.{p}", "transformer_blocks.{i}.norm2.linear.{p}"),
        chunks=12,
        groups=ADALN_GROUPS,
    ),
    Rename("time_embed.0.{p}", "time_embedding.linear_1.{p}"),
    Rename("time_embed.2.{p}", "time_embedding.linear_2.{p}"),
    Rename("ofs_embed.0.{p}", "ofs_embedding.linear_1.{p}"),
    Rename("ofs_embed.2.{p}", "ofs_embedding.linear_2.{p}"),
    Rename("mixins.patch_embed.proj.{p}", "patch_embed.proj.{p}"),
    Rename("mixins.patch_embed.text_proj.{p}", "patch_embed.text_proj.{p}"),
    Rename("mixins.final_layer.norm_final.{p}", "norm_out.norm.{p}"),
    Rename("mixins.final_layer.linear.{p}", "proj_out.{p}"),
    Rename("mixins.final_layer.adaLN_modulation.1.{p}", "norm_out.linear.{p}"),
    SatOnly("mixins.pos_embed.freqs_sin", "v1.0 RoPE table; diffusers' pipeline computes it"),
    SatOnly("mixins.pos_embed.freqs_cos", "v1.0 RoPE table; diffusers' pipeline computes it"),
    SatOnly("transformer.position_embeddings.weight", "unused in SAT; diffusers has no such tensor"),
]
LEARNED_PE = Rename("mixins.pos_embed.pos_embedding", "patch_embed.pos_embedding")
SINCOS_PE = SatOnly("mixins.pos_embed.pos_embedding", "fixed 3-D sin-cos table; diffusers computes it")


def transformer_key_map(cfg) -> KeyMap:
    """The rules for one model config (the 5B-I2V learnable table is data; the 2B sin-cos table is not)."""
    pe = LEARNED_PE if cfg.learnable_pos_embed else SINCOS_PE
    return KeyMap([*TRANSFORMER_RULES, pe], name="transformer")


def diffusers_transformer_config(cfg) -> dict:
    """`transformer/config.json` for a composed `model` config (no 2B default is assumed, unlike SAT's converter)."""
    generation = Generation(cfg.generation)
    heads, dim = cfg.num_attention_heads, cfg.hidden_size
    unsupported = []
    if not cfg.qk_ln:
        unsupported.append("qk_ln=false (diffusers always normalises q and k)")
    if PosEmbed(cfg.pos_embed) is PosEmbed.rope and cfg.rope_theta != 10000.0:
        unsupported.append(f"rope_theta={cfg.rope_theta} (diffusers' pipeline uses 10000)")
    if cfg.height_interpolation != cfg.width_interpolation:
        unsupported.append("height_interpolation != width_interpolation (diffusers has one spatial scale)")
    if cfg.learnable_pos_embed and PosEmbed(cfg.pos_embed) is not PosEmbed.rope:
        unsupported.append("a learnable table without RoPE (diffusers refuses that combination)")
    if cfg.ofs_embed_dim and cfg.ofs_embed_dim != cfg.time_embed_dim:
        unsupported.append("ofs_embed_dim != time_embed_dim")
    if unsupported:
        raise CogvidError(f"model {cfg.name} cannot be expressed in diffusers: {'; '.join(unsupported)}")
    return {
        "_class_name": TRANSFORMER_CLASS,
        "_diffusers_version": DIFFUSERS_VERSION,
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "attention_head_dim": dim // heads,
        "dropout": 0.0,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": cfg.in_channels,
        "max_text_seq_length": cfg.text_length,
        "norm_elementwise_affine": bool(cfg.elementwise_affine),
        "norm_eps": cfg.layernorm_epsilon,
        "num_attention_heads": heads,
        "num_layers": cfg.num_layers,
        "ofs_embed_dim": cfg.ofs_embed_dim or None,
        "out_channels": cfg.out_channels,
        # cogvid's patch embedding always has a bias (diffusers' 1.5 Linear ignores patch_bias and has one too)
        "patch_bias": True,
        "patch_size": cfg.patch_size,
        "patch_size_t": None if generation is Generation.v1_0 else cfg.patch_size_t,
        "sample_frames": cfg.num_frames,
        "sample_height": cfg.latent_height,
        "sample_width": cfg.latent_width,
        "spatial_interpolation_scale": cfg.height_interpolation,
        "temporal_compression_ratio": cfg.time_compressed_rate,
        "temporal_interpolation_scale": cfg.time_interpolation,
        "text_embed_dim": cfg.text_hidden_size,
        "time_embed_dim": cfg.time_embed_dim,
        "timestep_activation_fn": "silu",
        "use_learned_positional_embeddings": bool(cfg.learnable_pos_embed),
        "use_rotary_positional_embeddings": PosEmbed(cfg.pos_embed) is PosEmbed.rope,
    }


# The fields that decide the tensors' names and shapes; a diffusers config that differs here is another model.
STRUCTURAL_FIELDS = (
    "num_layers",
    "num_attention_heads",
    "attention_head_dim",
    "in_channels",
    "out_channels",
    "time_embed_dim",
    "ofs_embed_dim",
    "text_embed_dim",
    "patch_size",
    "patch_size_t",
    "use_rotary_positional_embeddings",
    "use_learned_positional_embeddings",
)


def check_transformer_config(found: dict, cfg, where: str) -> None:
    """Refuse a diffusers transformer config that describes another variant than the composed model."""
    if found.get("_class_name", TRANSFORMER_CLASS) != TRANSFORMER_CLASS:
        raise CogvidError(f"{where} is a {reprlib.repr(found.get('_class_name'))}, not a {TRANSFORMER_CLASS}")
    expected = diffusers_transformer_config(cfg)
    defaults = {"patch_size_t": None, "ofs_embed_dim": None, "use_learned_positional_embeddings": False}
    differ = [
        f"{k}={reprlib.repr(found.get(k, defaults.get(k)))} (model={cfg.name} has {expected[k]})"  # bounded, one line
        for k in STRUCTURAL_FIELDS
        if found.get(k, defaults.get(k)) != expected[k]
    ]
    if differ:
        raise CogvidError(
            f"{where} is another variant: {', '.join(differ[:3])}; pick the matching model=... "
            "(2b, 5b, 5b_i2v, 1.5_5b, 1.5_5b_i2v) or override its sizes"
        )


def meta_transformer(cfg):
    """cogvid's DiT for `cfg` on the meta device: names and shapes of every SAT tensor, no memory."""
    from cogvid.models.dit import DiffusionTransformer

    with torch.device("meta"):
        return DiffusionTransformer(cfg)


def sat_transformer_shapes(cfg) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in meta_transformer(cfg).state_dict().items()}


def rebuild_sat_tensor(cfg, key: str) -> tuple[torch.Tensor, str]:
    """A SAT tensor diffusers does not hold, made again from the config: (tensor in float32, why)."""
    from cogvid.models.positions import SinCosPositionEmbedding, rope_angles

    dim, head_dim = cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads
    grid = meta_transformer(cfg).mixins["pos_embed"].grid
    if key == "mixins.pos_embed.pos_embedding":
        interp = (cfg.time_interpolation, cfg.height_interpolation, cfg.width_interpolation)
        return SinCosPositionEmbedding(dim, cfg.text_length, grid, interp).pos_embedding.data, "sin-cos table"
    if key in ("mixins.pos_embed.freqs_sin", "mixins.pos_embed.freqs_cos"):
        angles = rope_angles(head_dim, grid, cfg.rope_theta).reshape(-1, head_dim)
        return (angles.sin() if key.endswith("sin") else angles.cos()), "RoPE table"
    if key == "transformer.position_embeddings.weight":
        return torch.zeros(cfg.max_sequence_length, dim), "unused by SAT: zeros"
    raise KeyError(key)
