"""LoRA between SAT and diffusers, and merging a SAT LoRA into its base.

SAT `sat/model/finetune/lora2.py`; SAT's own one-way exporter is `tools/export_sat_lora_weight.py`.

SAT's LoraMixin adapts every layer's attention.query_key_value (one A, B pair per Q, K, V) and attention.dense,
scaled by alpha / r. In diffusers (PEFT) those are the to_q / to_k / to_v / to_out.0 adapters of each block,
named `transformer.transformer_blocks.{i}.attn1.<module>.lora_{A,B}.weight` in `pytorch_lora_weights.safetensors`.

The scale: diffusers reads `lora_alpha` and `r` from the file's `lora_adapter_metadata` header entry and assumes
alpha = r (scale 1) without it. `lora_scale=metadata` (default) writes B as trained plus alpha and r, so the
adapter loaded at weight 1.0 is SAT's model; `lora_scale=fold` writes B * alpha / r and alpha = r, which is
also right in loaders that ignore the metadata. Importing reads the metadata back (scale 1 when absent).
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import torch

from cogvid.config.schema import LoraScale
from cogvid.interop.keymap import KeyMap, MappingReport, Rename, SatOnly, Side, check_against
from cogvid.interop.tensor_io import read_safetensors, write_safetensors_shards
from cogvid.interop.transformer_map import rebuild_sat_tensor, sat_transformer_shapes, transformer_key_map
from cogvid.models.lora import is_adapter, lora_rank
from cogvid.sat.checkpoint import SAT_ITERATION, read_sat_state_dict, save_sat_checkpoint
from cogvid.utils.errors import CogvidError
from cogvid.utils.lazy_tensors import TensorInfo, TensorSource, TensorTarget, mapped_source
from cogvid.utils.user_files import parse_json, require_fields

log = logging.getLogger(__name__)

LORA_WEIGHTS = "pytorch_lora_weights"  # diffusers' LORA_WEIGHT_NAME_SAFE, without .safetensors
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
COMPONENT = "transformer"  # the pipeline component the adapters belong to (the key prefix)
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]

_QKV = "transformer.layers.{i}.attention.query_key_value"
_DENSE = "transformer.layers.{i}.attention.dense"
_BLOCK = f"{COMPONENT}.transformer_blocks.{{i}}.attn1"
LORA_RULES = [
    Rename(f"{sat}.matrix_{ab}.{k}", f"{_BLOCK}.{module}.lora_{ab}.weight")
    for sat, parts in ((_QKV, ("to_q", "to_k", "to_v")), (_DENSE, ("to_out.0",)))
    for k, module in enumerate(parts)
    for ab in ("A", "B")
]
LORA_KEYMAP = KeyMap(LORA_RULES, name="lora")


def lora_model_cfg(cfg, rank: int):
    """`cfg` with the LoRA rank set (a copy): the meta model then names SAT's adapter tensors."""
    from omegaconf import OmegaConf

    copy = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    copy.lora_rank = rank
    return copy


def read_sat_lora(cfg, path: str | Path) -> tuple[TensorSource, TensorSource, int]:
    """(adapters, base tensors with plain names, rank) of a SAT LoRA checkpoint, checked against `cfg`.

    The base part is what SAT training saves next to the adapters (`X.original.weight` -> `X.weight`); it may be
    empty (an adapter-only file, as `lora_to_sat` writes without a base).
    """
    state, _ = read_sat_state_dict(path)
    adapters = {k: v for k, v in state.items() if is_adapter(k)}
    if not adapters:
        raise CogvidError(
            f"{path} holds no LoRA adapters (no matrix_A / matrix_B tensors): it is a full checkpoint; "
            "export it with task=to_diffusers"
        )
    rank = lora_rank(adapters)
    expected = sat_transformer_shapes(lora_model_cfg(cfg, rank))
    hint = "a LoRA of another variant? pick the matching model=..."
    check_against(
        {k: v for k, v in mapped_source(adapters, str(path)).infos.items()},
        {k: s for k, s in expected.items() if is_adapter(k)},
        f"{path} does not fit model={cfg.name} with LoRA rank {rank}",
        hint,
    )
    base = {k.replace(".original.", "."): v for k, v in state.items() if not is_adapter(k)}
    return mapped_source(adapters, str(path)), mapped_source(base, str(path)), rank


def lora_metadata(rank: int, alpha: float) -> dict[str, str]:
    """The safetensors header entry diffusers turns into the adapter's LoraConfig."""
    config = {
        f"{COMPONENT}.r": rank,
        f"{COMPONENT}.lora_alpha": alpha,
        f"{COMPONENT}.target_modules": TARGET_MODULES,
        f"{COMPONENT}.lora_dropout": 0.0,
        f"{COMPONENT}.bias": "none",
    }
    return {METADATA_KEY: json.dumps(config, indent=2, sort_keys=True)}


def _scaled(target: TensorTarget, factor: float) -> TensorTarget:
    return TensorTarget(target.name, target.shape, target.dtype, lambda: target.build().float() * factor)


def export_lora(cfg, lora_path: str | Path, out: Path, scale: LoraScale) -> MappingReport:
    """SAT LoRA checkpoint -> `out/pytorch_lora_weights.safetensors` (8 tensors per layer, any layer count)."""
    adapters, base, rank = read_sat_lora(cfg, lora_path)
    alpha = float(cfg.lora_alpha)
    targets, report = LORA_KEYMAP.plan(adapters, Side.sat)
    if report.unmapped:  # pragma: no cover - the shape check above admits only SAT's adapter names
        raise CogvidError(f"{lora_path}: adapters without a diffusers name: {', '.join(report.unmapped[:3])}")
    if LoraScale(scale) is LoraScale.fold:
        targets = [_scaled(t, alpha / rank) if ".lora_B." in t.name else t for t in targets]
        metadata = lora_metadata(rank, float(rank))
    else:
        metadata = lora_metadata(rank, alpha)
    report.dropped.extend((k, "base weight: a diffusers LoRA holds only adapters") for k in base.keys())
    write_safetensors_shards(out, LORA_WEIGHTS, targets, 2**62, metadata=metadata, desc="lora")
    log.info("lora (rank %d, alpha %g, %s): %s", rank, alpha, LoraScale(scale).value, report.summary())
    return report


def read_diffusers_lora(source: str | Path) -> tuple[TensorSource, float, int]:
    """(adapters with pipeline-prefixed names, the scale diffusers applies at weight 1.0, rank) of a LoRA file."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / f"{LORA_WEIGHTS}.safetensors"
    if not path.is_file():
        raise CogvidError(f"source={source}: no {LORA_WEIGHTS}.safetensors there")
    if not path.name.endswith(".safetensors"):
        raise CogvidError(f"source={source}: a diffusers LoRA is a .safetensors file")
    source_, header = read_safetensors(path)
    keys = list(source_.keys())
    if not keys or not all("lora" in k for k in keys):
        other = next((k for k in keys if "lora" not in k), None)
        raise CogvidError(
            f"{path} is not a diffusers LoRA (key {other!r} has no 'lora'): a full transformer? use task=to_sat"
        )
    renamed = {k if k.startswith(f"{COMPONENT}.") else f"{COMPONENT}.{k}": k for k in keys}
    infos = {new: source_.infos[old] for new, old in renamed.items()}
    adapters = TensorSource(infos, lambda k: source_.load(renamed[k]), str(path))
    ranks = {info.shape[0] for k, info in infos.items() if ".lora_A." in k}
    if len(ranks) != 1:
        raise CogvidError(f"{path}: adapters of different ranks {sorted(ranks)}; SAT's LoRA has one rank")
    rank = ranks.pop()
    scale = 1.0
    if METADATA_KEY in header:
        stored = parse_json(header[METADATA_KEY], f"{path}: the metadata {METADATA_KEY}")
        meta = {k.removeprefix(f"{COMPONENT}."): v for k, v in stored.items()}
        if meta.get("rank_pattern") or meta.get("alpha_pattern"):
            raise CogvidError(f"{path}: per-module ranks or alphas (rank_pattern) cannot become one SAT LoRA")
        require_fields({"r": rank, "lora_alpha": rank, **meta}, path, {"r": int, "lora_alpha": float}, "a PEFT LoRA")
        if meta.get("r", rank) != rank:
            raise CogvidError(f"{path}: metadata says r={meta.get('r')} but the tensors have rank {rank}")
        scale = float(meta.get("lora_alpha", rank)) / rank
    return adapters, scale, rank


def import_lora(cfg, source: str | Path, out: Path, base_ckpt: str | None) -> MappingReport:
    """diffusers LoRA -> SAT LoRA checkpoint `out/latest` + `out/1/mp_rank_00_model_states.pt`.

    B is rescaled so that SAT's alpha / r (model.lora_alpha) gives the scale diffusers applied. With model.ckpt
    the base weights are written too, as SAT's LoRA training saves them (`X.original.weight`), so the folder loads
    with mode=lora; without it the file holds only the adapters (for task=merge_lora with a base).
    """
    adapters, diffusers_scale, rank = read_diffusers_lora(source)
    targets, report = LORA_KEYMAP.plan(adapters, Side.diffusers)
    if report.unmapped:
        modules = sorted({k.split(".lora_")[0].split("attn1.")[-1].split(".")[-1] for k in report.unmapped})
        raise CogvidError(
            f"{adapters.origin}: {len(report.unmapped)} adapters have no place in SAT's LoRA, which covers only "
            f"attention q, k, v and out ({', '.join(report.unmapped[:2])}; modules {', '.join(modules[:4])})"
        )
    sat_scale = float(cfg.lora_alpha) / rank
    if diffusers_scale != sat_scale:
        factor = diffusers_scale / sat_scale
        targets = [_scaled(t, factor) if ".matrix_B." in t.name else t for t in targets]
    expected = sat_transformer_shapes(lora_model_cfg(cfg, rank))
    check_against(
        targets,
        {k: s for k, s in expected.items() if is_adapter(k)},
        f"{adapters.origin} does not fit model={cfg.name} with LoRA rank {rank}",
        "a LoRA of another variant? pick the matching model=...",
    )
    if base_ckpt:
        from cogvid.interop.sat_to_diffusers import plan_transformer, read_sat_transformer

        plain = lora_model_cfg(cfg, 0)
        base = read_sat_transformer(plain, base_ckpt)
        plan_transformer(plain, base, None)  # the base must be this variant
        lora_keys = {k for k in expected if ".original." in k}
        for key in base.keys():
            stem, _, leaf = key.rpartition(".")
            name = f"{stem}.original.{leaf}"
            name = name if name in lora_keys else key
            info = base.infos[key]
            targets.append(TensorTarget(name, info.shape, info.dtype, lambda k=key: base.load(k)))
        check_against(targets, expected, f"{base_ckpt} + LoRA do not fit model={cfg.name}", "another variant?")
    save_sat_checkpoint(targets, out, SAT_ITERATION)
    log.info("lora -> SAT (rank %d, scale %g -> alpha/r %g): %s", rank, diffusers_scale, sat_scale, report.summary())
    return report


def _merged_weight(base, adapters, key: str, parts: int, scale: float) -> torch.Tensor:
    """W + cat_k(B_k A_k) scale for the base weight `key` (stem.weight), formed in float32, in W's dtype; `parts`
    adapter pairs (3 for the fused qkv, whose output rows are [q ; k ; v])."""
    stem = key.rpartition(".")[0]
    w = base.load(key)
    pairs = [(adapters.load(f"{stem}.matrix_B.{k}"), adapters.load(f"{stem}.matrix_A.{k}")) for k in range(parts)]
    delta = torch.cat([b.float() @ a.float() for b, a in pairs])
    return (w.float() + delta * scale).to(w.dtype)


def merge_lora(cfg, lora_path: str | Path, base_ckpt: str | None, out: Path, dtype) -> MappingReport:
    """SAT base + SAT LoRA -> one plain SAT checkpoint: W + cat_k(B_k A_k) alpha / r on every qkv and dense.

    The base is model.ckpt when given, else the `.original` weights inside the LoRA checkpoint. The sum is formed
    in float32 and cast back to the base's dtype (as cogvid's `LoraLinear.merged_weight`).
    """
    from cogvid.interop.sat_to_diffusers import read_sat_transformer

    adapters, inner_base, rank = read_sat_lora(cfg, lora_path)
    plain = lora_model_cfg(cfg, 0)
    if base_ckpt:
        base = read_sat_transformer(plain, base_ckpt)
    elif len(inner_base):
        base = inner_base
    else:
        raise CogvidError(f"{lora_path} holds only adapters: give the base checkpoint as model.ckpt=...")
    expected = sat_transformer_shapes(plain)
    keymap = transformer_key_map(plain)
    rebuilt = {  # tables a release checkpoint may leave out; SAT computes them
        k: rebuild_sat_tensor(plain, k)[0]
        for k in expected
        if k not in base and isinstance((keymap.match(k, Side.sat) or (None,))[0], SatOnly)
    }
    infos = {**base.infos, **{k: TensorInfo(tuple(v.shape), v.dtype) for k, v in rebuilt.items()}}
    check_against(infos, expected, f"the base ({base.origin}) does not fit model={cfg.name}", "another variant?")
    scale = float(cfg.lora_alpha) / rank
    report = MappingReport()
    targets = []
    for key in expected:
        info = infos[key]
        if key in rebuilt:
            report.rebuilt.append((key, "absent from the base; computed from the config"))
            targets.append(TensorTarget(key, info.shape, dtype or info.dtype, lambda k=key: rebuilt[k]))
            continue
        stem, _, leaf = key.rpartition(".")
        parts = 3 if stem.endswith("query_key_value") else 1
        if leaf == "weight" and f"{stem}.matrix_A.0" in adapters:
            build = partial(_merged_weight, base, adapters, key, parts, scale)
            targets.append(TensorTarget(key, info.shape, dtype or info.dtype, build))
        else:
            targets.append(TensorTarget(key, info.shape, dtype or info.dtype, lambda k=key: base.load(k)))
    report.mapped = len(targets)
    save_sat_checkpoint(targets, out, SAT_ITERATION)
    log.info("merged LoRA rank %d (alpha/r %g) into %d tensors", rank, scale, len(targets))
    return report
