"""The VAE's key map (SAT `3d-vae.pt` <-> diffusers `AutoencoderKLCogVideoX`) and its config.

SAT keeps the decoder's levels in resolution order (`up.0` is the finest) and runs them backwards; diffusers
stores them in execution order, so `decoder.up.{u}` is `decoder.up_blocks.{n-1-u}`. Resnets are `block.{j}` vs
`resnets.{j}`, the 1x1 shortcut is `nin_shortcut` vs `conv_shortcut`, the middle blocks `mid.block_{1,2}` vs
`mid_block.resnets.{0,1}`. SAT's `loss.*` (the discriminator) is dropped. As SAT `tools/convert_weight_sat2hf.py`.
"""

from __future__ import annotations

import math
import reprlib

import torch

from cogvid.config.schema import Generation
from cogvid.interop.keymap import KeyMap, Rename, SatOnly
from cogvid.interop.transformer_map import DIFFUSERS_VERSION

VAE_CLASS = "AutoencoderKLCogVideoX"


def vae_key_map(levels: int) -> KeyMap:
    """The rules for a VAE with `levels` resolutions (len(ch_mult); 4 in every released model)."""
    rules = [SatOnly("loss.{rest}", "SAT's training loss (discriminator), not part of the autoencoder")]
    for coder in ("encoder", "decoder"):
        rules += [
            Rename(f"{coder}.conv_in.{{rest}}", f"{coder}.conv_in.{{rest}}"),
            Rename(f"{coder}.mid.block_1.{{rest}}", f"{coder}.mid_block.resnets.0.{{rest}}"),
            Rename(f"{coder}.mid.block_2.{{rest}}", f"{coder}.mid_block.resnets.1.{{rest}}"),
            Rename(f"{coder}.norm_out.{{rest}}", f"{coder}.norm_out.{{rest}}"),
            Rename(f"{coder}.conv_out.{{rest}}", f"{coder}.conv_out.{{rest}}"),
        ]
    rules += [
        Rename("encoder.down.{i}.block.{j}.nin_shortcut.{p}", "encoder.down_blocks.{i}.resnets.{j}.conv_shortcut.{p}"),
        Rename("encoder.down.{i}.block.{j}.{rest}", "encoder.down_blocks.{i}.resnets.{j}.{rest}"),
        Rename("encoder.down.{i}.downsample.{rest}", "encoder.down_blocks.{i}.downsamplers.0.{rest}"),
    ]
    mirror = ("u", levels)
    rules += [
        Rename(
            "decoder.up.{u}.block.{j}.nin_shortcut.{p}", "decoder.up_blocks.{u}.resnets.{j}.conv_shortcut.{p}", mirror
        ),
        Rename("decoder.up.{u}.block.{j}.{rest}", "decoder.up_blocks.{u}.resnets.{j}.{rest}", mirror),
        Rename("decoder.up.{u}.upsample.{rest}", "decoder.up_blocks.{u}.upsamplers.0.{rest}", mirror),
    ]
    return KeyMap(rules, name="vae")


def diffusers_vae_config(cfg) -> dict:
    """`vae/config.json` for a composed `model` config: sizes from model.vae, the latent scale from the model, the
    norms as cogvid's VAE builds them (GroupNorm(32), eps 1e-6)."""
    from cogvid.models.vae import GROUPS, NORM_EPS

    vae = cfg.vae
    levels = len(vae.ch_mult)
    return {
        "_class_name": VAE_CLASS,
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "block_out_channels": [vae.ch * m for m in vae.ch_mult],
        "down_block_types": ["CogVideoXDownBlock3D"] * levels,
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": vae.z_channels,
        "latents_mean": None,
        "latents_std": None,
        "layers_per_block": vae.num_res_blocks,
        "norm_eps": NORM_EPS,
        "norm_num_groups": GROUPS,
        "out_channels": 3,
        "sample_height": cfg.latent_height * 2 ** (levels - 1),
        "sample_width": cfg.latent_width * 2 ** (levels - 1),
        "scaling_factor": cfg.scale_factor,
        "shift_factor": None,
        "temporal_compression_ratio": vae.temporal_compress_times,
        "up_block_types": ["CogVideoXUpBlock3D"] * levels,
        "use_post_quant_conv": False,
        "use_quant_conv": False,
        # 1.5 pipelines divide the I2V image latent by the scale instead of multiplying (diffusers' convention)
        "invert_scale_latents": Generation(cfg.generation) is Generation.v1_5,
    }


VAE_STRUCTURAL_FIELDS = ("block_out_channels", "layers_per_block", "latent_channels", "temporal_compression_ratio")


def check_vae_config(found: dict, cfg, where: str) -> list[str]:
    """Refuse a VAE config of another size; return notes on values that only differ in meaning (scale)."""
    from cogvid.utils.errors import CogvidError

    if found.get("_class_name", VAE_CLASS) != VAE_CLASS:
        raise CogvidError(f"{where} is a {reprlib.repr(found.get('_class_name'))}, not a {VAE_CLASS}")
    expected = diffusers_vae_config(cfg)
    differ = [
        f"{k}={reprlib.repr(found.get(k))} (model.vae gives {expected[k]})"  # bounded, one line
        for k in VAE_STRUCTURAL_FIELDS
        if k in found and _norm(found[k]) != _norm(expected[k])
    ]
    if differ:
        raise CogvidError(f"{where} is a VAE of another size: {', '.join(differ)}; set model.vae.* to match")
    notes = []
    scaling = found.get("scaling_factor", cfg.scale_factor)
    if not _finite_number(scaling):
        raise CogvidError(f"{where}: scaling_factor {reprlib.repr(scaling)} is not a number")
    if abs(float(scaling) - cfg.scale_factor) > 1e-9:
        notes.append(
            f"{where}: scaling_factor {found['scaling_factor']} differs from model.scale_factor {cfg.scale_factor} "
            "(SAT keeps the scale in the model config, not with the VAE weights)"
        )
    return notes


def _finite_number(value) -> bool:
    """A JSON number that fits a float (not true/false, a string, a list, inf, nor an int beyond float range)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _norm(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def meta_vae(cfg):
    from cogvid.models.vae import CausalVideoVAE

    with torch.device("meta"):
        return CausalVideoVAE.from_config(cfg.vae)


def sat_vae_shapes(cfg) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in meta_vae(cfg).state_dict().items()}
