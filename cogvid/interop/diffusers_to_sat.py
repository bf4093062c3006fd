"""diffusers -> SAT: a pipeline folder (or a transformer / VAE folder) to the layout SAT and cogvid-sample load.

    OUT/transformer/latest                              "1"
    OUT/transformer/1/mp_rank_00_model_states.pt        {"module": {"model.diffusion_model.<key>": tensor}}
    OUT/transformer/model_config.json
    OUT/vae/3d-vae.pt                                   {"state_dict": {"encoder.*", "decoder.*"}}
    OUT/t5-v1_1-xxl/                                    text_encoder/ + tokenizer/ files (from a whole pipeline)

The same key maps as the export, read the other way; the tensors diffusers does not hold (the 2B sin-cos table,
v1.0's RoPE buffers, SAT's unused position_embeddings) are rebuilt from the model config. The source's config is
checked against the composed model first, so weights of another variant are refused with the differing field.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from cogvid.config.schema import ExportPart
from cogvid.interop.keymap import MappingReport, SatOnly, Side, check_against
from cogvid.interop.tensor_io import find_weight_files, read_safetensors
from cogvid.interop.transformer_map import (
    WEIGHTS_STEM,
    check_transformer_config,
    rebuild_sat_tensor,
    sat_transformer_shapes,
    transformer_key_map,
)
from cogvid.interop.vae_map import check_vae_config, sat_vae_shapes, vae_key_map
from cogvid.sat.checkpoint import SAT_ITERATION, save_sat_checkpoint, write_sat_model_states
from cogvid.utils.errors import CogvidError
from cogvid.utils.lazy_tensors import TensorSource
from cogvid.utils.user_files import read_json

log = logging.getLogger(__name__)

T5_FOLDER = "t5-v1_1-xxl"


def read_diffusers_component(folder: Path) -> tuple[dict, TensorSource]:
    """(config.json, lazy weights) of a diffusers model folder (transformer/ or vae/)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CogvidError(f"{folder} has no config.json: not a diffusers model folder")
    config = read_json(config_file)
    source, _ = read_safetensors(find_weight_files(folder, WEIGHTS_STEM))
    source.origin = str(folder)
    return config, source


def source_folders(source: str | Path) -> dict[str, Path]:
    """{'transformer': DIR, 'vae': DIR, 'pipeline': DIR} for a pipeline folder, the component folders of a
    partial export, or the one component given."""
    path = Path(source).expanduser()
    if not path.exists():
        raise CogvidError(f"source={source} does not exist")
    if path.is_file():
        raise CogvidError(f"source={source} is a file: give a diffusers pipeline, transformer or vae folder")
    if (path / "model_index.json").is_file():
        return {"pipeline": path, "transformer": path / "transformer", "vae": path / "vae"}
    parts = {p: path / p for p in ("transformer", "vae") if (path / p / "config.json").is_file()}
    if parts:  # what task=to_diffusers parts=[...] writes: the component folders without model_index.json
        return parts
    config_file = path / "config.json"
    if config_file.is_file():
        cls = read_json(config_file).get("_class_name", "")
        if cls == "CogVideoXTransformer3DModel":
            return {"transformer": path}
        if cls == "AutoencoderKLCogVideoX":
            return {"vae": path}
        shown = cls if isinstance(cls, str) and cls.isprintable() and cls else "model without a _class_name name"
        raise CogvidError(f"{path} holds a {shown}, not a CogVideoX transformer or VAE")
    if (path / "pytorch_lora_weights.safetensors").is_file():
        raise CogvidError(f"source={source} is a LoRA folder: convert it with task=lora_to_sat")
    raise CogvidError(f"source={source} is not a diffusers folder (no model_index.json or config.json)")


def plan_sat_transformer(cfg, source: TensorSource, dtype: torch.dtype | None):
    """SAT-named targets for a diffusers transformer source; shapes asserted against `cfg`'s model."""
    if any("lora" in k for k in source.keys()):
        raise CogvidError(f"{source.origin} holds LoRA weights: convert them with task=lora_to_sat")
    keymap = transformer_key_map(cfg)
    expected = sat_transformer_shapes(cfg)
    rebuild = [k for k in expected if isinstance((keymap.match(k, Side.sat) or (None,))[0], SatOnly)]
    stored = next((v.dtype for v in source.infos.values() if v.dtype.is_floating_point), torch.float32)

    def rebuilt(key: str) -> tuple[torch.Tensor, str]:
        tensor, why = rebuild_sat_tensor(cfg, key)
        return tensor.to(dtype or stored), why

    targets, report = keymap.plan(source, Side.diffusers, dtype=dtype, rebuild=rebuilt, rebuild_keys=rebuild)
    if report.unmapped:
        raise CogvidError(
            f"{source.origin}: {len(report.unmapped)} tensors have no SAT name ({', '.join(report.unmapped[:3])}); "
            "not a CogVideoX transformer?"
        )
    hint = "a checkpoint of another variant? pick the matching model=..."
    check_against(targets, expected, f"{source.origin} does not fit model={cfg.name}", hint)
    return targets, report


def import_transformer(cfg, folder: Path, out: Path, dtype: torch.dtype | None) -> MappingReport:
    config, source = read_diffusers_component(folder)
    check_transformer_config(config, cfg, str(folder / "config.json"))
    targets, report = plan_sat_transformer(cfg, source, dtype)
    save_sat_checkpoint(targets, out, SAT_ITERATION, desc="transformer")
    log.info("transformer: %s", report.summary())
    return report


def import_vae(cfg, folder: Path, out: Path) -> MappingReport:
    config, source = read_diffusers_component(folder)
    for note in check_vae_config(config, cfg, str(folder / "config.json")):
        log.warning(note)
    targets, report = vae_key_map(len(cfg.vae.ch_mult)).plan(source, Side.diffusers)
    if report.unmapped:
        raise CogvidError(
            f"{folder}: {len(report.unmapped)} tensors have no SAT name ({', '.join(report.unmapped[:3])})"
        )
    check_against(targets, sat_vae_shapes(cfg), f"{folder} does not fit model.vae", "another VAE size?")
    write_sat_model_states(out / "3d-vae.pt", targets, wrapper="state_dict", desc="vae")
    log.info("vae: %s", report.summary())
    return report


def copy_t5(pipeline: Path, out: Path) -> None:
    """The pipeline's text_encoder/ and tokenizer/ files into one T5 folder, as the SAT release lays it out."""
    out.mkdir(parents=True)
    for part in ("text_encoder", "tokenizer"):
        folder = pipeline / part
        if not folder.is_dir():
            raise CogvidError(f"{pipeline} has no {part}/ folder")
        for file in sorted(folder.iterdir()):
            if file.is_file():
                shutil.copyfile(file, out / file.name)


def import_to_sat(cfg, source: str | Path, out: Path, parts: set[ExportPart], dtype) -> dict[str, MappingReport]:
    folders = source_folders(source)
    wanted = {p.value for p in parts} & {"transformer", "vae"}
    if not wanted & set(folders) and not ("pipeline" in folders and ExportPart.text_encoder in parts):
        raise CogvidError(f"source={source} holds none of the requested parts ({', '.join(sorted(wanted))})")
    reports: dict[str, MappingReport] = {}
    if ExportPart.transformer in parts and "transformer" in folders:
        reports["transformer"] = import_transformer(cfg, folders["transformer"], out / "transformer", dtype)
    if ExportPart.vae in parts and "vae" in folders:
        reports["vae"] = import_vae(cfg, folders["vae"], out / "vae")
    if "pipeline" in folders and ExportPart.text_encoder in parts:
        copy_t5(folders["pipeline"], out / T5_FOLDER)
    return reports
