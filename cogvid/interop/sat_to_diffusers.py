"""SAT -> diffusers: a pipeline folder (or some of its parts) from a SAT transformer, a `3d-vae.pt` and a T5 folder.

Layout written (what `CogVideoXPipeline.from_pretrained(DIR)` reads):

    DIR/model_index.json
    DIR/transformer/config.json + diffusion_pytorch_model[-0000i-of-0000n].safetensors (+ .index.json)
    DIR/vae/config.json + diffusion_pytorch_model.safetensors          (float32)
    DIR/scheduler/scheduler_config.json                                 (CogVideoXDDIMScheduler)
    DIR/text_encoder/config.json + weights                              (copied as they are)
    DIR/tokenizer/tokenizer.json + tokenizer_config.json                (model_max_length = model.text_length)

Every value comes from the composed model config. Tensors are read memory-mapped and written one at a time.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from cogvid.config.schema import ExportPart, is_image_to_video
from cogvid.diffusion.schedules import LINEAR_END, LINEAR_START, NUM_TIMESTEPS
from cogvid.interop.keymap import MappingReport, SatOnly, Side, check_against
from cogvid.interop.tensor_io import write_safetensors_shards
from cogvid.interop.transformer_map import (
    DIFFUSERS_VERSION,
    TRANSFORMER_CLASS,
    WEIGHTS_STEM,
    diffusers_transformer_config,
    sat_transformer_shapes,
    transformer_key_map,
)
from cogvid.interop.vae_map import VAE_CLASS, diffusers_vae_config, sat_vae_shapes, vae_key_map
from cogvid.models.lora import is_lora_key, lora_rank
from cogvid.sat.checkpoint import read_sat_state_dict, read_sat_vae_state_dict
from cogvid.utils.errors import CogvidError
from cogvid.utils.files import writing
from cogvid.utils.lazy_tensors import TensorSource, mapped_source

log = logging.getLogger(__name__)

SCHEDULER_CLASS = "CogVideoXDDIMScheduler"
ANOTHER_VARIANT = "a checkpoint of another variant? pick the matching model=... (2b, 5b, 5b_i2v, 1.5_5b, 1.5_5b_i2v)"


def pipeline_class(cfg) -> str:
    return "CogVideoXImageToVideoPipeline" if is_image_to_video(cfg) else "CogVideoXPipeline"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path):
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_sat_transformer(cfg, path: str | Path) -> TensorSource:
    """A SAT transformer checkpoint as a lazy source; a LoRA checkpoint or another variant is refused here."""
    state, _ = read_sat_state_dict(path)
    adapters = [k for k in state if is_lora_key(k)]
    if adapters:
        rank = lora_rank(state)
        raise CogvidError(
            f"{path} is a LoRA checkpoint (rank {rank}, {len(adapters)} adapter/original tensors): export its adapters "
            "with task=lora_to_diffusers, or merge them into the base first with task=merge_lora"
        )
    return mapped_source(state, str(path))


def plan_transformer(cfg, source: TensorSource, dtype: torch.dtype | None):
    """Targets (diffusers names) for a SAT transformer source, after checking it is `cfg`'s variant."""
    keymap = transformer_key_map(cfg)
    optional = {
        k for k in sat_transformer_shapes(cfg) if isinstance((keymap.match(k, Side.sat) or (None,))[0], SatOnly)
    }
    expected = {k: s for k, s in sat_transformer_shapes(cfg).items() if k not in optional}
    present = {k: v for k, v in source.infos.items() if k not in optional}
    check_against(present, expected, f"{source.origin} does not fit model={cfg.name}", ANOTHER_VARIANT)
    return keymap.plan(source, Side.sat, dtype=dtype)


def export_transformer(cfg, ckpt: str | Path, folder: Path, dtype: torch.dtype, max_shard_bytes: int) -> MappingReport:
    source = read_sat_transformer(cfg, ckpt)
    config = diffusers_transformer_config(cfg)
    targets, report = plan_transformer(cfg, source, dtype)
    write_safetensors_shards(folder, WEIGHTS_STEM, targets, max_shard_bytes, desc="transformer")
    _write_json(folder / "config.json", config)
    log.info("transformer: %s", report.summary())
    return report


def read_sat_vae(cfg, path: str | Path) -> TensorSource:
    path = Path(path)
    if path.is_dir():
        raise CogvidError(f"model.vae_ckpt={path} is a folder: give the file, e.g. {path / '3d-vae.pt'}")
    state = read_sat_vae_state_dict(path)
    source = mapped_source(state, str(path))
    check_against(
        source.infos,
        sat_vae_shapes(cfg),
        f"{path} does not fit model.vae",
        "not a CogVideoX 3d-vae.pt, or another VAE size? set model.vae.*",
    )
    return source


def export_vae(cfg, vae_ckpt: str | Path, folder: Path, max_shard_bytes: int) -> MappingReport:
    source = read_sat_vae(cfg, vae_ckpt)
    targets, report = vae_key_map(len(cfg.vae.ch_mult)).plan(source, Side.sat, dtype=torch.float32)
    write_safetensors_shards(folder, WEIGHTS_STEM, targets, max_shard_bytes, desc="vae")
    _write_json(folder / "config.json", diffusers_vae_config(cfg))
    log.info("vae: %s", report.summary())
    return report


def scheduler_config(cfg) -> dict:
    """CogVideoXDDIMScheduler as `tools/convert_weight_sat2hf.py` writes it, with the variant's SNR shift."""
    return {
        "_class_name": SCHEDULER_CLASS,
        "_diffusers_version": DIFFUSERS_VERSION,
        "beta_end": LINEAR_END,
        "beta_schedule": "scaled_linear",
        "beta_start": LINEAR_START,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "num_train_timesteps": NUM_TIMESTEPS,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "sample_max_value": 1.0,
        "set_alpha_to_one": True,
        "snr_shift_scale": cfg.shift_scale,
        "steps_offset": 0,
        "timestep_spacing": "trailing",
        "trained_betas": None,
    }


def export_text_encoder(cfg, t5_path: str, out: Path, parts: set[ExportPart]) -> None:
    """Copy T5's config and weights to `text_encoder/`, save its tokenizer to `tokenizer/` with the variant's
    max length and no id the encoder cannot embed. `t5_path`: a SAT-release T5 folder (spiece.model + config +
    weights) or a diffusers pipeline."""
    from cogvid.models.t5 import check_t5_folder, load_t5_tokenizer, t5_folders, t5_weight_files

    path = Path(t5_path).expanduser()
    if not path.is_dir():
        raise CogvidError(f"model.text_encoder.path={t5_path} is not a folder (T5 folder or diffusers pipeline)")
    tokenizer_dir, encoder_dir = (Path(p) for p in t5_folders(str(path)))
    config_file = encoder_dir / "config.json"
    config = check_t5_folder(str(path), cfg.text_hidden_size)
    if ExportPart.text_encoder in parts:
        weights = t5_weight_files(encoder_dir)
        if not weights:
            raise CogvidError(f"{encoder_dir} has no safetensors weights (model.safetensors or shards + index)")
        index = encoder_dir / "model.safetensors.index.json"
        target = out / "text_encoder"
        target.mkdir(parents=True)
        for file in [config_file, *weights, *([index] if index.is_file() else [])]:
            shutil.copyfile(file, target / file.name)
    if ExportPart.tokenizer in parts:
        vocab_size = config.get("vocab_size")
        try:
            # the ids T5Conditioner gives cogvid: the same loader, and sentinels past the encoder's rows dropped
            tokenizer = load_t5_tokenizer(str(tokenizer_dir), vocab_size, model_max_length=cfg.text_length)
        except (OSError, ValueError) as ex:
            raise CogvidError(f"cannot load the T5 tokenizer from {tokenizer_dir} ({str(ex).splitlines()[0]})") from ex
        if vocab_size is not None and len(tokenizer) > vocab_size:
            raise CogvidError(
                f"{tokenizer_dir}: the tokenizer has {len(tokenizer)} ids but the T5 encoder in {encoder_dir} embeds "
                f"only {vocab_size}: not the tokenizer of this encoder?"
            )
        tokenizer.save_pretrained(str(out / "tokenizer"))


def model_index(cfg) -> dict:
    return {
        "_class_name": pipeline_class(cfg),
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", SCHEDULER_CLASS],
        "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "transformer": ["diffusers", TRANSFORMER_CLASS],
        "vae": ["diffusers", VAE_CLASS],
    }


def check_inputs(cfg, parts: set[ExportPart]) -> None:
    """Every input the requested parts need is named and exists, before anything is written."""
    needs = [
        (ExportPart.transformer, "ckpt", "model.ckpt=/weights/CogVideoX-5b-sat/transformer"),
        (ExportPart.vae, "vae_ckpt", "model.vae_ckpt=/weights/CogVideoX-5b-sat/vae/3d-vae.pt"),
    ]
    for part, key, example in needs:
        if part in parts:
            value = cfg.get(key)
            if not value:
                raise CogvidError(f"parts includes {part.value} but model.{key} is not set: give {example}")
            if not Path(value).expanduser().exists():
                raise CogvidError(f"model.{key}={value} does not exist")
    if parts & {ExportPart.text_encoder, ExportPart.tokenizer}:
        value = cfg.text_encoder.get("path")
        if not value:
            raise CogvidError(
                "parts includes the text encoder but model.text_encoder.path is not set: give the T5 folder, "
                "e.g. model.text_encoder.path=/weights/t5-v1_1-xxl (or parts=[transformer,vae])"
            )
        if not Path(value).expanduser().exists():
            raise CogvidError(f"model.text_encoder.path={value} does not exist")


def export_to_diffusers(
    cfg, out: Path, parts: set[ExportPart], dtype: torch.dtype, max_shard_bytes: int
) -> dict[str, MappingReport]:
    """Write the requested parts of a diffusers pipeline into `out` (an empty folder); model_index.json only when
    every part is written."""
    diffusers_transformer_config(cfg)  # refuses what diffusers cannot express, before any file is read
    reports: dict[str, MappingReport] = {}
    if ExportPart.transformer in parts:
        reports["transformer"] = export_transformer(cfg, cfg.ckpt, out / "transformer", dtype, max_shard_bytes)
    if ExportPart.vae in parts:
        reports["vae"] = export_vae(cfg, cfg.vae_ckpt, out / "vae", max_shard_bytes)
    if ExportPart.scheduler in parts:
        _write_json(out / "scheduler" / "scheduler_config.json", scheduler_config(cfg))
    if parts & {ExportPart.text_encoder, ExportPart.tokenizer}:
        export_text_encoder(cfg, cfg.text_encoder.path, out, parts)
    if parts == set(ExportPart):
        _write_json(out / "model_index.json", model_index(cfg))
    return reports
