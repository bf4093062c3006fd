"""Import a CogVideoX SAT model YAML (`sat/configs/cogvideox_*.yaml`) as cogvid `model/` + `sampler/` configs.

The YAML is read with `yaml.safe_load` and walked as plain data. Every `target:` is matched by its last dotted
component against the SAT classes cogvid implements; no module named in the file is ever imported. Every key
must be known, and each known key gets one of three treatments:

* mapped: it becomes a `ModelConfig` / `SamplerConfig` field (or a recorded text-encoder / VAE setting);
* harmless: SAT reads it, but cogvid implements only one value of it (`_Node.harmless`, with the reason at
  each call); any other value stops the import;
* ignored: SAT reads it, but no value of it changes what cogvid computes (`_Node.ignored`, with the reason at
  each call).

Anything else (an unknown key, an unknown target, inconsistent values) is a `CogvidError` whose one line names
the place in the YAML, e.g. `model.sampler_config.target`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from cogvid.config.compose import conf_dir
from cogvid.config.schema import (
    Dtype,
    DynamicSchedule,
    Generation,
    Guider,
    ModelConfig,
    PosEmbed,
    SamplerConfig,
    Solver,
    Uncond,
    ZeroSnrRescale,
)
from cogvid.utils.errors import CogvidError
from cogvid.utils.files import write_files_atomic
from cogvid.utils.user_files import read_yaml

# SAT class names cogvid implements, by what they configure (the last dotted component of `target:`).
POS_EMBEDS = {
    "Basic3DPositionEmbeddingMixin": PosEmbed.sincos,
    "Rotary3DPositionEmbeddingMixin": PosEmbed.rope,
}
SOLVERS = {
    "VPSDEDPMPP2MSampler": Solver.dpmpp2m_sde,
    "VPODEDPMPP2MSampler": Solver.dpmpp2m_ode,
    "VideoDDIMSampler": Solver.ddim,
}
GUIDERS = {
    "DynamicCFG": Guider.dynamic,
    "VanillaCFG": Guider.constant,
    "IdentityGuider": Guider.none,  # what SAT's sampler builds when guider_config is absent
}

# SAT defaults that differ from (or are not in) cogvid's schema.
SAT_T5_MAX_LENGTH = 77  # FrozenT5Embedder's max_length default
SAT_T5_MODEL_DIR = "google/t5-v1_1-xxl"

_REQUIRED = object()
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")  # 1e-5, which YAML 1.1 reads as a string


@dataclass
class SatImport:
    """What one SAT model YAML says, in cogvid's terms."""

    model: dict[str, Any]  # every ModelConfig field, in schema order
    sampler: dict[str, Any]  # every SamplerConfig field, in schema order
    # Validated; what cogvid uses of them is in `model` (text_length, vae sizes), the rest is kept for reference.
    text_encoder: dict[str, Any]  # FrozenT5Embedder settings
    first_stage: dict[str, Any]  # VAE settings
    source: str = "<memory>"
    notes: list[str] = field(default_factory=list)  # extra lines for the written files' header


# ------------------------------------------------------------------------------------------------------------
# Reading the YAML


def read_sat_yaml(path: str | os.PathLike) -> dict:
    """Load a SAT YAML with `yaml.safe_load` (no tags, no code) and insist on a mapping at the top."""
    return read_yaml(path, "SAT config")


def _bounded_repr() -> reprlib.Repr:
    shown = reprlib.Repr()
    shown.maxstring = shown.maxother = 60
    return shown


# repr with a bounded depth and length: YAML aliases can nest a list of 2**40 references in a few lines
_REPR = _bounded_repr()


def _show(value: Any) -> str:
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps bools apart from numbers and compares floats with a tolerance."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        try:
            return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
        except OverflowError:  # an int beyond float range: no value cogvid implements
            return False
    return type(a) is type(b) and a == b


class _Node:
    """One mapping of the SAT YAML and its dotted path; `finish` rejects every key no reader asked for."""

    def __init__(self, data: Mapping, path: str):
        self.data = data
        self.path = path
        self._read: set = set()

    def where(self, key: Any) -> str:
        return f"{self.path}.{key}" if self.path else str(key)

    def value(self, key: str, default: Any = _REQUIRED) -> Any:
        self._read.add(key)
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            raise CogvidError(f"{self.where(key)} is missing")
        return default

    def integer(self, key: str, default: Any = _REQUIRED, *, minimum: int | None = None) -> int:
        v = self.value(key, default)
        if v is None and default is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise CogvidError(f"{self.where(key)} must be an integer, got {_show(v)}")
        if minimum is not None and v < minimum:
            raise CogvidError(f"{self.where(key)} must be at least {minimum}, got {v}")
        return v

    def number(self, key: str, default: Any = _REQUIRED, *, low: float | None = None, high: float | None = None):
        v = self.value(key, default)
        if isinstance(v, str) and _FLOAT_TEXT.fullmatch(v.strip()):
            v = float(v)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise CogvidError(f"{self.where(key)} must be a number, got {_show(v)}")
        try:
            v = float(v)
        except OverflowError:
            raise CogvidError(f"{self.where(key)} = {_show(v)} is too large for a number") from None
        if (low is not None and v < low) or (high is not None and v > high):
            raise CogvidError(f"{self.where(key)} must lie in [{low}, {high}], got {v}")
        return v

    def flag(self, key: str, default: Any = _REQUIRED) -> bool:
        v = self.value(key, default)
        if not isinstance(v, bool):
            raise CogvidError(f"{self.where(key)} must be true or false, got {_show(v)}")
        return v

    def text(self, key: str, default: Any = _REQUIRED) -> str:
        v = self.value(key, default)
        if not isinstance(v, str):
            raise CogvidError(f"{self.where(key)} must be a string, got {_show(v)}")
        return v

    def child(self, key: str, *, required: bool = True) -> _Node | None:
        v = self.value(key, _REQUIRED if required else None)
        if v is None and not required:
            return None
        if not isinstance(v, Mapping):
            raise CogvidError(f"{self.where(key)} must be a mapping, got {_show(v)}")
        return _Node(v, self.where(key))

    def harmless(self, key: str, *allowed: Any, why: str) -> None:
        """Accept `key` only with a value cogvid implements (absent: SAT's default, which is one of them)."""
        self._read.add(key)
        if key not in self.data:
            return
        v = self.data[key]
        if not any(_same(v, a) for a in allowed):
            shown = " or ".join(_show(a) for a in allowed)
            raise CogvidError(f"{self.where(key)} = {_show(v)} is not supported: cogvid implements {shown} ({why})")

    def ignored(self, *keys: str) -> None:
        """Accept keys whatever their value; each call site says why no value of them changes the result."""
        self._read.update(keys)

    def finish(self) -> None:
        unknown = [k for k in self.data if k not in self._read]
        if unknown:
            key = unknown[0] if isinstance(unknown[0], str) and unknown[0].isprintable() else _show(unknown[0])
            raise CogvidError(f"unknown SAT key {self.where(key)}: cogvid cannot tell what it changes, so refuses it")


def _target(node: _Node, known: tuple[str, ...] | Mapping[str, Any]) -> tuple[str, _Node]:
    """The class name of `node.target` (checked against `known`, never imported) and its `params` node."""
    target = node.text("target")
    name = target.strip().rsplit(".", 1)[-1]
    if name not in known:
        raise CogvidError(
            f"unsupported SAT target {target!r} at {node.where('target')} (cogvid knows {', '.join(known)})"
        )
    params = node.child("params", required=False) or _Node({}, node.where("params"))
    return name, params


def _component(
    parent: _Node, key: str, known: tuple[str, ...] | Mapping[str, Any], *, required: bool = True
) -> tuple[str, _Node] | None:
    """Read `key: {target: ..., params: ...}` under `parent`; None when optional and absent."""
    node = parent.child(key, required=required)
    if node is None:
        return None
    name, params = _target(node, known)
    node.finish()
    return name, params


def _paramless(parent: _Node, key: str, known: tuple[str, ...], *, required: bool = True) -> None:
    """A component that takes no params cogvid would have to map (a non-empty `params:` is refused)."""
    component = _component(parent, key, known, required=required)
    if component is not None:
        component[1].finish()


def _schema_default(schema: type, name: str) -> Any:
    return {f.name: f.default for f in dataclasses.fields(schema)}[name]


# ------------------------------------------------------------------------------------------------------------
# The sections of `model:`


def _read_patch_size(p: _Node, out: dict) -> None:
    """patch_size, which also tells the code generation: an integer in the 1.0 code, [p_t, p, p] in the 1.5 code;
    the latent grid must be whole patches."""
    patch = p.value("patch_size")
    if isinstance(patch, int) and not isinstance(patch, bool) and patch >= 1:
        out["generation"], out["patch_size"], out["patch_size_t"] = Generation.v1_0, patch, 1
    elif (
        isinstance(patch, list)
        and len(patch) == 3
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in patch)
        and patch[1] == patch[2]
    ):
        out["generation"], out["patch_size"], out["patch_size_t"] = Generation.v1_5, patch[1], patch[0]
    else:
        raise CogvidError(
            f"{p.where('patch_size')} must be an integer (1.0 code) or [p_t, p, p] (1.5 code), got {_show(patch)}"
        )
    for key in ("latent_height", "latent_width"):
        if out[key] % out["patch_size"]:
            raise CogvidError(f"{p.where(key)} = {out[key]} is not divisible by the patch size {out['patch_size']}")


def _read_network(model: _Node, out: dict) -> None:
    """network_config: DiffusionTransformer and its mixins (SAT `dit_video_concat.py`, LoRA `lora2.py`)."""
    _, p = _component(model, "network_config", ("DiffusionTransformer",))
    hidden = p.integer("hidden_size", minimum=1)
    heads = p.integer("num_attention_heads", minimum=1)
    if hidden % heads:
        raise CogvidError(f"{p.where('hidden_size')} = {hidden} is not divisible by num_attention_heads = {heads}")
    out["hidden_size"], out["num_attention_heads"] = hidden, heads
    out["num_layers"] = p.integer("num_layers", minimum=1)
    out["in_channels"] = p.integer("in_channels", minimum=1)
    out["out_channels"] = p.integer("out_channels", minimum=1)
    out["num_frames"] = p.integer("num_frames", minimum=1)
    out["time_compressed_rate"] = p.integer("time_compressed_rate", minimum=1)
    out["latent_height"] = p.integer("latent_height", minimum=1)
    out["latent_width"] = p.integer("latent_width", minimum=1)
    out["elementwise_affine"] = p.flag("elementwise_affine")
    time_embed_dim = p.integer("time_embed_dim", None, minimum=1)  # SAT: None means hidden_size
    out["time_embed_dim"] = hidden if time_embed_dim is None else time_embed_dim

    _read_patch_size(p, out)

    out["ofs_embed_dim"] = p.integer("ofs_embed_dim", None, minimum=1)
    if out["ofs_embed_dim"] is not None and out["generation"] is not Generation.v1_5:
        raise CogvidError(f"{p.where('ofs_embed_dim')} needs the 1.5 code generation (patch_size as [p_t, p, p])")

    p.harmless("num_classes", None, why="the DiT is not class-conditional")
    p.harmless("input_time", "adaln", why="the timestep enters through adaLN")
    p.harmless("use_SwiGLU", False, why="the MLP is GELU(tanh)")
    p.harmless("use_RMSNorm", False, why="the norms are LayerNorm")
    for key in ("height_interpolation", "width_interpolation", "time_interpolation"):
        # The DiT stores these but never hands them to the positional mixin, whose own params are what count.
        p.harmless(key, 1.0, why="set it under modules.pos_embed_config.params, where SAT reads it")
    # adm_in_channels and zero_init_y_embed only matter with num_classes (refused above); parallel_output only
    # with model parallelism (model_parallel_size must be 1, below); dtype is overwritten by SAT's engine from
    # --fp16/--bf16 (see args).
    p.ignored("adm_in_channels", "zero_init_y_embed", "parallel_output", "dtype")

    _read_transformer_args(p.child("transformer_args"), out)
    _read_modules(p.child("modules"), out, head_dim=hidden // heads)
    p.finish()


def _read_transformer_args(ta: _Node, out: dict) -> None:
    """network_config.params.transformer_args: SAT BaseTransformer settings."""
    out["max_sequence_length"] = ta.integer(
        "max_sequence_length", _schema_default(ModelConfig, "max_sequence_length"), minimum=1
    )
    out["layernorm_epsilon"] = ta.number("layernorm_epsilon", _schema_default(ModelConfig, "layernorm_epsilon"))
    ta.harmless("layernorm_order", "pre", why="the adaLN block is pre-norm")
    ta.harmless("model_parallel_size", 1, why="cogvid does not split layers across ranks")
    ta.harmless("is_decoder", False, why="the DiT has no cross-attention")
    ta.harmless("hidden_dropout", 0.0, why="no dropout in the DiT")
    ta.harmless("attention_dropout", 0.0, why="no dropout in the DiT")
    # vocab_size sizes a word-embedding table the patch-embed mixin deletes; skip_init only affects random
    # init (weights are loaded); checkpoint_activations / checkpoint_num_layers trade memory for compute and
    # are a run choice (SAT's sampling forces them off; model.checkpoint_activations is not imported).
    ta.ignored("vocab_size", "skip_init", "checkpoint_activations", "checkpoint_num_layers")
    ta.finish()


def _read_modules(modules: _Node, out: dict, head_dim: int) -> None:
    """network_config.params.modules: the positional, patch-embed, adaLN, final-layer and LoRA mixins."""
    _read_pos_embed(modules, out, head_dim)

    _, patch = _component(modules, "patch_embed_config", ("ImagePatchEmbeddingMixin",))
    out["text_hidden_size"] = patch.integer("text_hidden_size", minimum=1)  # None in SAT drops text_proj
    patch.harmless("bias", True, why="the patch projection has a bias")
    patch.finish()

    _, adaln = _component(modules, "adaln_layer_config", ("AdaLNMixin",))
    out["qk_ln"] = adaln.flag("qk_ln", True)
    adaln.finish()

    _paramless(modules, "final_layer_config", ("FinalLayerMixin",))

    _read_lora(modules, out)
    modules.finish()


def _read_pos_embed(modules: _Node, out: dict, head_dim: int) -> None:
    """pos_embed_config: sin-cos (2B; its interpolation factors) or 3-D RoPE (5B, 1.5; theta, learnable table)."""
    name, pe = _component(modules, "pos_embed_config", POS_EMBEDS)
    out["pos_embed"] = POS_EMBEDS[name]
    if out["pos_embed"] is PosEmbed.sincos:
        out["text_length"] = pe.integer("text_length", 0)  # SAT's default 0 is refused just below
        for key in ("height_interpolation", "width_interpolation", "time_interpolation"):
            out[key] = pe.number(key, 1.0)  # SAT's default; the 2B config sets 1.875 for height and width
        out["learnable_pos_embed"] = False
        out["rope_theta"] = _schema_default(ModelConfig, "rope_theta")  # unused by sin-cos
    else:
        out["text_length"] = pe.integer("text_length")
        head = pe.integer("hidden_size_head", minimum=1)
        if head != head_dim:
            raise CogvidError(
                f"{pe.where('hidden_size_head')} = {head} must equal hidden_size / num_attention_heads = {head_dim}"
            )
        out["rope_theta"] = pe.number("theta", 10000.0)
        out["learnable_pos_embed"] = pe.flag("learnable_pos_embed", False)
        pe.harmless("rot_v", False, why="values are not rotated")
        # SAT's Rotary3DPositionEmbeddingMixin accepts the interpolation kwargs and ignores them; the schema's values
        # are written.
        pe.ignored("height_interpolation", "width_interpolation", "time_interpolation")
        for key in ("height_interpolation", "width_interpolation", "time_interpolation"):
            out[key] = _schema_default(ModelConfig, key)
    if out["text_length"] < 1:
        raise CogvidError(f"{pe.where('text_length')} must be set to the T5 max_length (226 or 224)")
    pe.finish()


def _read_lora(modules: _Node, out: dict) -> None:
    """lora_config (optional): LoraMixin's rank and alpha; rank 0 without it."""
    lora = _component(modules, "lora_config", ("LoraMixin",), required=False)
    if lora is None:
        out["lora_rank"], out["lora_alpha"] = 0, _schema_default(ModelConfig, "lora_alpha")
    else:
        lp = lora[1]
        out["lora_rank"] = lp.integer("r", minimum=1)
        out["lora_alpha"] = lp.number("lora_alpha", 1.0)
        lp.harmless("lora_dropout", 0.0, why="no dropout on the adapters")
        lp.harmless("layer_range", None, why="adapters on every layer")
        lp.harmless("qlora", False, why="no 4-bit base weights")
        lp.harmless("head_first", False, why="Q, K and V adapters are laid out one after another")
        lp.harmless("num_attention_heads", None, why="only read with head_first")
        lp.harmless("hidden_size_per_attention_head", None, why="only read with head_first")
        lp.ignored("cross_attention")  # only adapts cross-attention layers, which the DiT does not have
        lp.finish()


def _read_discretization(parent: _Node, key: str) -> tuple[str, float]:
    """A ZeroSNRDDPMDiscretization: its shift_scale and where it was read."""
    _, d = _component(parent, key, ("ZeroSNRDDPMDiscretization",))
    shift = d.number("shift_scale", 1.0, low=1e-12)
    d.harmless("linear_start", 0.00085, why="the scaled-linear betas of every CogVideoX model")
    d.harmless("linear_end", 0.012, why="the scaled-linear betas of every CogVideoX model")
    d.harmless("num_timesteps", 1000, why="a 1000-step DDPM table")
    d.harmless("keep_start", False, why="the schedule is rescaled to zero terminal SNR from its first value")
    d.harmless("post_shift", False, why="the SNR shift is applied before the rescale")
    d.finish()
    return d.where("shift_scale"), shift


def _read_denoiser(model: _Node) -> tuple[str, float]:
    """denoiser_config: DiscreteDenoiser with VideoScaling (v-prediction)."""
    _, p = _component(model, "denoiser_config", ("DiscreteDenoiser",))
    num_idx = p.integer("num_idx")
    if num_idx != 1000:
        raise CogvidError(f"{p.where('num_idx')} = {num_idx}; cogvid's denoiser uses the 1000-step table")
    quantize = p.flag("quantize_c_noise", True)  # SAT's default is True
    if quantize:
        raise CogvidError(f"{p.where('quantize_c_noise')} must be False: with VideoScaling c_noise is the timestep")
    p.harmless("do_append_zero", False, why="the denoiser table has no appended zero")
    p.harmless("flip", True, why="the table is indexed by timestep")
    _paramless(p, "weighting_config", ("EpsWeighting",))  # configured; the loss uses its own weight
    _paramless(p, "scaling_config", ("VideoScaling",))
    shift = _read_discretization(p, "discretization_config")
    p.finish()
    return shift


def _read_sampler(model: _Node) -> tuple[dict, tuple[str, float]]:
    """sampler_config: the solver, its step count and the guider."""
    name, p = _component(model, "sampler_config", SOLVERS)
    num_steps = p.integer("num_steps", minimum=1)
    shift = _read_discretization(p, "discretization_config")
    p.harmless("fixed_frames", 0, why="no latent frames are held fixed")
    p.harmless("sdedit", False, why="sampling starts from noise")
    p.ignored("verbose", "device")  # a progress bar, and the device (cogvid's `device=` chooses it)

    guider = _component(p, "guider_config", GUIDERS, required=False)
    guider_name, g = guider if guider is not None else ("IdentityGuider", _Node({}, p.where("guider_config")))
    scale = _schema_default(SamplerConfig, "guidance_scale")
    exp = _schema_default(SamplerConfig, "dynamic_exp")
    guider_steps = _schema_default(SamplerConfig, "dynamic_num_steps")
    if guider_name in ("DynamicCFG", "VanillaCFG"):
        scale = g.number("scale")
        _paramless(g, "dyn_thresh_config", ("NoDynamicThresholding",), required=False)
    if guider_name == "DynamicCFG":
        exp = g.number("exp")
        guider_steps = g.integer("num_steps", minimum=1)
    g.finish()
    p.finish()

    sampler = {
        "solver": SOLVERS[name],
        "num_steps": num_steps,
        "guidance_scale": scale,
        "guider": GUIDERS[guider_name],
        "dynamic_schedule": DynamicSchedule.faithful,  # SAT's timestep-based schedule
        "dynamic_exp": exp,
        "dynamic_num_steps": guider_steps,
        "uncond": Uncond.zeros,  # SAT's unconditional context is all zeros (force_uc_zero_embeddings)
        "zero_snr_rescale": ZeroSnrRescale.subset,  # SAT rescales the selected steps
        "cache": None,  # SAT has no step cache: every step runs every block
        # the cache's other options keep cogvid's defaults (they act only with sampler.cache)
        "cache_order": _schema_default(SamplerConfig, "cache_order"),
        "cache_warmup": _schema_default(SamplerConfig, "cache_warmup"),
        "cache_max_run": _schema_default(SamplerConfig, "cache_max_run"),
    }
    return sampler, shift


def _read_loss(model: _Node, out: dict) -> tuple[str, float] | None:
    """loss_fn_config: VideoDiffusionLoss with DiscreteSampling; optional, as in SAT."""
    loss = _component(model, "loss_fn_config", ("VideoDiffusionLoss",), required=False)
    if loss is None:
        out["uniform_sampling"] = _schema_default(ModelConfig, "uniform_sampling")
        out["group_num"] = _schema_default(ModelConfig, "group_num")
        return None
    p = loss[1]
    p.harmless("type", "l2", why="the loss is an L2 on x0, i.e. MSE on v")
    p.harmless("offset_noise_level", 0.0, why="no offset noise")
    p.harmless("fixed_frames", 0, why="no latent frames are held fixed")
    p.harmless("min_snr_value", None, why="SAT's min-SNR path would crash")
    p.harmless("block_scale", None, why="unused by SAT")
    p.harmless("block_size", None, why="unused by SAT")
    p.harmless("batch2model_keys", None, [], why="no extra batch entries reach the network")
    _, s = _component(p, "sigma_sampler_config", ("DiscreteSampling",))
    num_idx = s.integer("num_idx")
    if num_idx != 1000:
        raise CogvidError(f"{s.where('num_idx')} = {num_idx}; cogvid samples training timesteps from 0..999")
    s.harmless("do_append_zero", False, why="the table has no appended zero")
    s.harmless("flip", True, why="the table is indexed by timestep")
    out["uniform_sampling"] = s.flag("uniform_sampling", False)  # SAT's default is False
    group_num = s.integer("group_num", 0, minimum=0)
    out["group_num"] = group_num or None  # 0: SAT v1.0 derives the groups from the world size
    shift = _read_discretization(s, "discretization_config")
    s.finish()
    p.finish()
    return shift


def _read_conditioner(model: _Node, text_length: int) -> dict:
    """conditioner_config: one frozen T5 embedder whose max_length is the DiT's text_length."""
    _, p = _component(model, "conditioner_config", ("GeneralConditioner",))
    models = p.value("emb_models")
    p.harmless("cor_embs", [], why="no correlated embedder dropout")
    p.harmless("cor_p", [], why="no correlated embedder dropout")
    p.finish()
    where = p.where("emb_models")
    if not isinstance(models, list) or len(models) != 1:
        raise CogvidError(f"{where} must list exactly one embedder (the T5 encoder), got {_show(models)}")
    if not isinstance(models[0], Mapping):
        raise CogvidError(f"{where}[0] must be a mapping, got {_show(models[0])}")
    emb = _Node(models[0], f"{where}[0]")
    _, t5 = _target(emb, ("FrozenT5Embedder",))
    emb.harmless("is_trainable", False, why="T5 stays frozen")
    emb.harmless("input_key", "txt", why="the prompt is the batch's 'txt'")
    emb.harmless("legacy_ucg_value", None, why="dropped prompts become zero embeddings")
    ucg_rate = emb.number("ucg_rate", 0.0, low=0.0, high=1.0)
    emb.finish()

    max_length = t5.integer("max_length", SAT_T5_MAX_LENGTH, minimum=1)
    if max_length != text_length:
        raise CogvidError(f"{t5.where('max_length')} = {max_length} must equal the DiT's text_length = {text_length}")
    model_dir = t5.text("model_dir", SAT_T5_MODEL_DIR)
    t5.harmless("freeze", True, why="T5 stays frozen")
    t5.ignored("device", "cache_dir")  # where it runs and where downloads go: no effect on the embedding
    t5.finish()
    return {"model_dir": model_dir, "max_length": max_length, "ucg_rate": ucg_rate}


def _read_vae_half(parent: _Node, key: str, cls: str, model_out: dict) -> dict:
    """encoder_config / decoder_config of the 3-D VAE: validated, and the sizes recorded."""
    _, p = _component(parent, key, (cls,))
    half = {
        "ch": p.integer("ch", minimum=1),
        "ch_mult": p.value("ch_mult"),
        "num_res_blocks": p.integer("num_res_blocks", minimum=1),
        "z_channels": p.integer("z_channels", minimum=1),
    }
    mult = half["ch_mult"]
    if (
        not isinstance(mult, list)
        or not mult
        or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in mult)
    ):
        raise CogvidError(f"{p.where('ch_mult')} must be a list of positive integers, got {_show(mult)}")
    if half["z_channels"] != model_out["out_channels"]:
        raise CogvidError(
            f"{p.where('z_channels')} = {half['z_channels']} must equal the DiT's out_channels = "
            f"{model_out['out_channels']}"
        )
    compress = p.integer("temporal_compress_times", 4, minimum=1)
    if compress != model_out["time_compressed_rate"]:
        raise CogvidError(
            f"{p.where('temporal_compress_times')} = {compress} must equal the DiT's time_compressed_rate = "
            f"{model_out['time_compressed_rate']}"
        )
    p.harmless("in_channels", 3, why="RGB video")
    p.harmless("out_ch", 3, why="RGB video")
    p.harmless("attn_resolutions", [], why="the VAE has no attention")
    p.harmless("dropout", 0.0, why="no dropout in the VAE")
    p.harmless("resamp_with_conv", True, why="down/up-sampling by convolution")
    if cls == "ContextParallelEncoder3D":
        p.harmless("double_z", True, why="the encoder outputs mean and log-variance")
    else:
        p.harmless("zq_ch", None, half["z_channels"], why="SpatialNorm3D reads the latent itself")
        p.harmless("add_conv", False, why="SpatialNorm3D without the extra convolution")
        p.harmless("give_pre_end", False, why="the decoder runs to the RGB output")
        p.ignored("double_z")  # swallowed by the decoder's **kwargs
    # resolution only sizes attention, which there is none of; gather_norm only matters with context
    # parallelism (cp_size is 1 here).
    p.ignored("resolution", "gather_norm")
    p.finish()
    return half


def _read_first_stage(model: _Node, model_out: dict) -> dict:
    """first_stage_config: VideoAutoencoderInferenceWrapper around the context-parallel 3-D VAE."""
    _, p = _component(model, "first_stage_config", ("VideoAutoencoderInferenceWrapper",))
    p.harmless("cp_size", 0, 1, why="no context parallelism")
    p.harmless("ema_decay", None, why="no EMA weights")
    ckpt_path = p.value("ckpt_path", None)
    # ignore_keys drops the `loss.*` keys on load (cogvid's VAE loader never reads them); monitor and
    # input_key only concern SAT's own VAE training.
    p.ignored("ignore_keys", "monitor", "input_key")
    _paramless(p, "loss_config", ("Identity",))  # torch.nn.Identity: no VAE training loss
    _, reg = _component(p, "regularizer_config", ("DiagonalGaussianRegularizer",))
    reg.harmless("sample", True, why="latents are posterior samples, not the mode")
    reg.finish()
    encoder = _read_vae_half(p, "encoder_config", "ContextParallelEncoder3D", model_out)
    decoder = _read_vae_half(p, "decoder_config", "ContextParallelDecoder3D", model_out)
    differ = [k for k in encoder if encoder[k] != decoder[k]]
    if differ:
        raise CogvidError(f"{p.where('encoder_config')} and decoder_config differ in {', '.join(differ)}")
    p.finish()
    return {"ckpt_path": ckpt_path, "encoder": encoder, "decoder": decoder}


def _read_model_scalars(model: _Node, out: dict) -> None:
    """The scalars of `model:` that SATVideoDiffusionEngine reads."""
    out["scale_factor"] = model.number("scale_factor", 1.0)  # SAT's default
    out["latent_input"] = model.flag("latent_input", False)
    out["noised_image_input"] = model.flag("noised_image_input", False)
    out["noised_image_dropout"] = model.number("noised_image_dropout", 0.0, low=0.0, high=1.0)
    model.harmless("noised_image_all_concat", False, why="the image latent fills the first frame only")
    model.harmless("lr_scale", None, why="no super-resolution branch")
    model.harmless("lora_train", False, why="LoRA training is mode=lora")
    model.harmless("use_pd", False, why="no progressive distillation")
    prefixes = model.value("not_trainable_prefixes", None)
    # SAT's default freezes the VAE and T5 (full SFT); ['all'] freezes all but the LoRA matrices. cogvid's
    # `mode=` chooses this at run time, so the two shipped forms are accepted and nothing else.
    shipped = (["conditioner", "first_stage_model"], ["all"])
    if prefixes is not None and not (
        isinstance(prefixes, list) and all(isinstance(x, str) for x in prefixes) and sorted(prefixes) in shipped
    ):
        raise CogvidError(
            f"{model.where('not_trainable_prefixes')} = {_show(prefixes)} is not supported: cogvid "
            "implements ['first_stage_model', 'conditioner'] (mode=sft) or ['all'] (mode=lora)"
        )
    wrapper = model.value("network_wrapper", None)
    if wrapper is not None and (not isinstance(wrapper, str) or wrapper.strip().rsplit(".", 1)[-1] != "OpenAIWrapper"):
        raise CogvidError(
            f"unsupported SAT network wrapper {_show(wrapper)} at {model.where('network_wrapper')} "
            "(cogvid knows OpenAIWrapper)"
        )
    # log_keys: logging; input_key: the batch key of the video; disable_first_stage_autocast: no effect on
    # the VAE's dtype in practice (SAT casts the whole model); compile_model and en_and_decode_n_samples_a_time:
    # speed and memory; augmentation_dropout: never read by SAT.
    model.ignored(
        "log_keys",
        "input_key",
        "disable_first_stage_autocast",
        "compile_model",
        "en_and_decode_n_samples_a_time",
        "augmentation_dropout",
    )


def _read_args(top: _Node, out_channels: int) -> tuple[Dtype | None, list[str]]:
    """`args:` (SAT's argparse overrides): the run's dtype (if it says) and notes for the written header.

    Only the dtype, the latent channels and the checkpoint concern the model; every other argument is about
    the run (prompts, frames, output) and is not read.
    """
    args = top.child("args", required=False)
    if args is None:
        return None, []
    dtype = None
    fp16, bf16 = args.flag("fp16", False), args.flag("bf16", False)
    if fp16 and bf16:
        raise CogvidError(f"{args.where('fp16')} and {args.where('bf16')} are both true")
    if "fp16" in args.data or "bf16" in args.data:
        dtype = Dtype.fp16 if fp16 else Dtype.bf16 if bf16 else Dtype.fp32  # SAT runs fp32 without either
    channels = args.integer("latent_channels", None)
    if channels is not None and channels != out_channels:
        raise CogvidError(
            f"{args.where('latent_channels')} = {channels} must equal the DiT's out_channels = {out_channels}"
        )
    notes = []
    load = args.value("load", None)
    if load is not None and not isinstance(load, str):
        raise CogvidError(f"{args.where('load')} must be a path, got {_show(load)}")
    if load is not None:
        notes.append(f"the SAT run loaded weights from args.load = {load!r}: pass model.ckpt=<that folder>")
    return dtype, notes


# ------------------------------------------------------------------------------------------------------------
# The import


def check_name(name: str) -> str:
    """A config name that is a safe file name and a plain Hydra override value."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CogvidError(f"--name {name!r} must be letters, digits, '_', '.' or '-' (starting with a letter or digit)")
    return name


def _add_unstated(out: dict, first_stage: dict) -> None:
    """Add to `out` what a SAT YAML leaves to the run: run choices, sampling defaults, the VAE's shape, and no
    weight paths (those come from overrides at run time)."""
    out["checkpoint_activations"] = False  # a run choice, see _read_transformer_args
    out["zero_final_linear"] = False  # SAT's from-scratch init: a xavier output projection
    out["ckpt"] = None  # weights come from model.ckpt=... at run time
    # SAT's model_dir is a path relative to where SAT ran; the user points at T5 with model.text_encoder.path=...
    out["text_encoder"] = {"path": None}
    # Sampling defaults: v1.0's sample_video.py samples its configured latent grid (60 x 90 -> 480 x 720, which it
    # hard-codes); HEAD's --sampling-image-size defaults to 768 x 1360 and its configs to 16 fps.
    v1_5 = out["generation"] is Generation.v1_5
    if v1_5:
        out["default_height"], out["default_width"] = 768, 1360
    else:
        out["default_height"], out["default_width"] = 8 * out["latent_height"], 8 * out["latent_width"]
    out["default_fps"] = 16 if v1_5 else 8
    out["vae_ckpt"] = None  # SAT's ckpt_path is relative to where SAT ran; model.vae_ckpt=... at run time
    out["lora_ckpt"] = None  # a LoRA is loaded at run time, model.lora_ckpt=...
    out["vae"] = {k: first_stage["encoder"][k] for k in ("ch", "ch_mult", "num_res_blocks", "z_channels")}
    out["vae"]["temporal_compress_times"] = out["time_compressed_rate"]


def convert_sat_config(
    doc: Mapping, name: str, *, dtype: str | Dtype | None = None, source: str = "<memory>"
) -> SatImport:
    """Map a loaded SAT YAML (see `read_sat_yaml`) to cogvid model and sampler values; nothing is imported.

    `dtype` overrides the one the YAML implies (`args.fp16` / `args.bf16`; otherwise the schema's bf16).
    """
    check_name(name)
    if not isinstance(doc, Mapping):
        raise CogvidError(f"SAT config {source} holds {type(doc).__name__}, not a mapping")
    top = _Node(doc, "")
    model = top.child("model")
    out: dict[str, Any] = {"name": name}

    # 1. The model section: network, denoiser + sampler + loss (one shift_scale), conditioner, first stage.
    _read_network(model, out)
    denoiser_shift = _read_denoiser(model)
    sampler, sampler_shift = _read_sampler(model)
    out["shift_scale"] = _one_shift_scale(denoiser_shift, sampler_shift, _read_loss(model, out))
    text_encoder = _read_conditioner(model, out["text_length"])
    first_stage = _read_first_stage(model, out)
    _read_model_scalars(model, out)
    model.finish()
    _check_in_channels(out)

    # 2. The run's args (its dtype); the training-run sections that SAT merges from other --base files (sft.yaml)
    #    are not about the model.
    args_dtype, notes = _read_args(top, out["out_channels"])
    top.ignored("data", "deepspeed")
    top.finish()

    # 3. What the YAML does not say: the dtype asked for, run choices, and where the weights come from.
    out["dtype"] = _dtype(dtype) if dtype is not None else args_dtype or _schema_default(ModelConfig, "dtype")
    _add_unstated(out, first_stage)

    return SatImport(
        model=_in_schema_order(ModelConfig, out),
        sampler=_in_schema_order(SamplerConfig, sampler),
        text_encoder=text_encoder,
        first_stage=first_stage,
        source=source,
        notes=notes,
    )


def _one_shift_scale(*shifts: tuple[str, float] | None) -> float:
    """The ZeroSNR shift_scale that the denoiser, the sampler and the loss (when it has one) all give, as
    (where, value) pairs; one line when they disagree."""
    given = [s for s in shifts if s is not None]
    if any(not _same(value, given[0][1]) for _, value in given):
        listed = ", ".join(f"{where} = {value}" for where, value in given)
        raise CogvidError(f"the ZeroSNR shift_scale values disagree: {listed}")
    return given[0][1]


def _check_in_channels(out: dict) -> None:
    """The DiT's input is the noisy latent, and for I2V (noised_image_input) the image latent beside it."""
    expected_in = out["out_channels"] * (2 if out["noised_image_input"] else 1)
    if out["in_channels"] != expected_in:
        why = "noisy latent + image latent" if out["noised_image_input"] else "noised_image_input is false"
        raise CogvidError(
            f"model.network_config.params.in_channels = {out['in_channels']} must be {expected_in} ({why})"
        )


def _dtype(dtype: str | Dtype) -> Dtype:
    try:
        return Dtype(dtype)
    except ValueError:
        raise CogvidError(f"dtype {dtype!r} is not one of {', '.join(d.value for d in Dtype)}") from None


def _in_schema_order(schema: type, values: dict) -> dict:
    names = [f.name for f in dataclasses.fields(schema)]
    missing, extra = set(names) - set(values), set(values) - set(names)
    if missing or extra:  # a schema field without a mapping here (or the reverse) is a bug in this module
        raise RuntimeError(f"sat_config maps {schema.__name__} incompletely: missing {missing}, extra {extra}")
    return {n: values[n] for n in names}


def import_sat_config(path: str | os.PathLike, name: str, *, dtype: str | Dtype | None = None) -> SatImport:
    """Read and map a SAT model YAML file."""
    doc = read_sat_yaml(path)
    imported = convert_sat_config(doc, name, dtype=dtype, source=str(path))
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    imported.source = f"{path} (sha256 {digest}...)"
    return imported


# ------------------------------------------------------------------------------------------------------------
# Writing the configs


def _yaml_value(value: Any) -> str:
    if isinstance(value, Enum):
        value = value.value
    return yaml.safe_dump(value, default_flow_style=True, width=100_000).removesuffix("\n...\n").strip()


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


_MODEL_COMMENTS = {
    "checkpoint_activations": "a run choice; SAT's transformer_args.checkpoint_activations is not imported",
    "ckpt": "model.ckpt=/path/to/<variant>-sat/transformer",
    "lora_ckpt": "model.lora_ckpt=/path/to/a/lora (optional)",
    "text_encoder": "model.text_encoder.path=/path/to/t5-v1_1-xxl",
    "vae_ckpt": "model.vae_ckpt=/path/to/<variant>-sat/vae/3d-vae.pt",
}


def render_config(imported: SatImport, group: str, out_dir: str | os.PathLike) -> str:
    """The text of `model/NAME.yaml` or `sampler/NAME.yaml`: a header naming the source, then every field."""
    values = imported.model if group == "model" else imported.sampler
    name = imported.model["name"]
    lines = [
        f"# cogvid {group} config imported by `cogvid-export sat-config` from the SAT config",
        f"#   {_one_line(imported.source)}",
        f"# Use: cogvid-sample --config-dir {_one_line(str(out_dir))} model={name} sampler={name}",
        *(f"# Note: {_one_line(n)}" for n in imported.notes),
    ]
    comments = _MODEL_COMMENTS if group == "model" else {}
    for key, value in values.items():
        line = f"{key}: {_yaml_value(value)}"
        lines.append(f"{line}  # {comments[key]}" if key in comments else line)
    return "\n".join(lines) + "\n"


def _check_against_schemas(imported: SatImport) -> None:
    from omegaconf import OmegaConf

    OmegaConf.merge(OmegaConf.structured(ModelConfig), imported.model)
    OmegaConf.merge(OmegaConf.structured(SamplerConfig), imported.sampler)


def write_configs(imported: SatImport, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write `OUT_DIR/model/NAME.yaml` and `OUT_DIR/sampler/NAME.yaml`; returns their paths."""
    name = check_name(imported.model["name"])
    packaged = conf_dir()
    for group in ("model", "sampler"):
        if (packaged / group / f"{name}.yaml").exists():
            # cogvid's own config would win the composition and hide the imported one.
            raise CogvidError(f"--name {name!r} is taken by cogvid's packaged {group}/{name}.yaml; choose another")
    _check_against_schemas(imported)
    out = Path(out_dir)
    paths = (out / "model" / f"{name}.yaml", out / "sampler" / f"{name}.yaml")
    texts = (render_config(imported, "model", out), render_config(imported, "sampler", out))
    try:  # both files or neither
        write_files_atomic({path: text.encode("utf-8") for path, text in zip(paths, texts, strict=True)})
    except OSError as ex:
        raise CogvidError(f"cannot write {ex.filename or paths[0]}: {ex.strerror or ex}") from None
    return paths


def export_sat_config(
    path: str | os.PathLike, name: str, out_dir: str | os.PathLike, *, dtype: str | Dtype | None = None
) -> tuple[Path, Path]:
    """Import a SAT model YAML; write cogvid `model/NAME.yaml` and `sampler/NAME.yaml` under `out_dir`."""
    return write_configs(import_sat_config(path, name, dtype=dtype), out_dir)
