"""`run_export(cfg)`: the work of cogvid-export, one task of a composed `export` config (conf/export.yaml).

The weight tasks move checkpoints between SAT and diffusers with every variant value from `cfg.model` (required:
no variant is assumed); they write into a staged folder that replaces `out` only when complete. `sat_config`
imports a SAT model YAML as cogvid configs (`cogvid.sat.yaml_import.export_sat_config`) and needs no model.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from cogvid.config.checks import check_values
from cogvid.config.schema import ExportPart, ExportTask
from cogvid.utils.errors import CogvidError


def _parts(names) -> set[ExportPart]:
    if not names:
        raise CogvidError("parts is empty: name at least one of transformer, vae, scheduler, text_encoder, tokenizer")
    return {ExportPart(p) for p in names}


def _model(cfg, task: ExportTask):
    if OmegaConf.is_missing(cfg, "model"):
        raise CogvidError(f"You must specify 'model' for task={task.value}, e.g. model=5b (no variant is assumed)")
    return cfg.model


def run_export(cfg) -> dict:
    """Run one export task; returns the mapping reports by part (empty for sat_config)."""
    check_values(cfg)  # first, before torch is imported; `out` is not a file nor under one
    task = ExportTask(cfg.task)
    if task is ExportTask.sat_config:
        return _sat_config(cfg)
    from cogvid.utils.files import check_output_free, staged_folder
    from cogvid.utils.runtime import torch_dtype  # imports torch: after the option values are checked

    model = _model(cfg, task)
    out = check_output_free(cfg.out, cfg.overwrite)
    parts = _parts(cfg.parts)
    dtype = torch_dtype(cfg.dtype)

    if task is ExportTask.to_diffusers:
        from cogvid.interop.sat_to_diffusers import check_inputs, export_to_diffusers
        from cogvid.interop.tensor_io import parse_size

        check_inputs(model, parts)
        shard = parse_size(cfg.max_shard_size)
        with staged_folder(out, cfg.overwrite) as staged:
            reports = export_to_diffusers(model, staged, parts, dtype or torch_dtype(model.dtype), shard)
    elif task is ExportTask.to_sat:
        from cogvid.interop.diffusers_to_sat import import_to_sat

        source = _required_path(cfg.source, "source", "the diffusers pipeline, transformer or vae folder")
        with staged_folder(out, cfg.overwrite) as staged:
            reports = import_to_sat(model, source, staged, parts, dtype)
    elif task is ExportTask.lora_to_diffusers:
        from cogvid.interop.lora import export_lora

        lora = _required_path(cfg.lora, "lora", "the SAT LoRA checkpoint folder")
        with staged_folder(out, cfg.overwrite) as staged:
            reports = {"lora": export_lora(model, lora, staged, cfg.lora_scale)}
    elif task is ExportTask.lora_to_sat:
        from cogvid.interop.lora import import_lora

        source = _required_path(cfg.source, "source", "the diffusers LoRA (folder or pytorch_lora_weights.safetensors)")
        with staged_folder(out, cfg.overwrite) as staged:
            reports = {"lora": import_lora(model, source, staged, model.get("ckpt"))}
    else:  # merge_lora
        from cogvid.interop.lora import merge_lora

        lora = _required_path(cfg.lora, "lora", "the SAT LoRA checkpoint folder")
        with staged_folder(out, cfg.overwrite) as staged:
            reports = {"merged": merge_lora(model, lora, model.get("ckpt"), staged, dtype)}
    summary = "; ".join(f"{part}: {report.summary()}" for part, report in reports.items())
    print(f"wrote {out}" + (f" ({summary})" if summary else ""))
    return reports


def _sat_config(cfg) -> dict:
    from cogvid.sat.yaml_import import export_sat_config

    if not cfg.source:
        raise CogvidError("source is not set: give the SAT model YAML, e.g. source=PATH")
    if not cfg.name or not cfg.out:
        raise CogvidError("task=sat_config needs name=NAME and out=CONFIG_DIR")
    model_path, sampler_path = export_sat_config(cfg.source, cfg.name, cfg.out, dtype=cfg.dtype)
    print(
        f"wrote {model_path} and {sampler_path}; use them with: "
        f"cogvid-sample --config-dir {cfg.out} model={cfg.name} sampler={cfg.name}"
    )
    return {}


def _required_path(value, key: str, what: str) -> str:
    """`value` as a path that exists; one line naming `key` when it is unset or missing."""
    if not value:
        raise CogvidError(f"{key} is not set: give {what}, e.g. {key}=PATH")
    if not Path(value).expanduser().exists():
        raise CogvidError(f"{key}={value} does not exist")
    return str(value)
