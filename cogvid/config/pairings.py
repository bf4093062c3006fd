"""Options that act only together with another one: the one table of such pairings, checked with the option values
(`cogvid.config.checks.check_values`) before anything loads.

An option counts as set when its value differs from the schema's default. Set while what it needs is off, it would
silently do nothing, so the run is refused with one line, or, for the sampler's guidance options (which a sweep over
`sampler.guider` sets for every job), logged once as ignored; a sample's sidecar lists the ignored ones
(`ignored_options`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from cogvid.config.schema import (
    DataConfig,
    ExportConfig,
    InferConfig,
    ModelConfig,
    SamplerConfig,
    TrainConfig,
    is_image_to_video,
)
from cogvid.utils.errors import CogvidError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pairing:
    option: str  # dotted key, e.g. "infer.strength"
    acts_with: str  # what it needs, as the message says it: "infer.video (video to video)"
    active: Callable[[Any], bool]  # cfg -> whether that is on
    commands: tuple[str, ...]  # the configs it is checked in: sample, train, export
    refuse: bool = True  # False: one warning line, and the option is listed as ignored


def _value(node) -> Any:
    """A config value in plain form: enums by value, lists as lists."""
    node = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
    return getattr(node, "value", node)


def _task(cfg) -> str:
    return str(_value(cfg.get("task")))


def _guided(cfg) -> bool:
    return _value(cfg.sampler.guider) != "none"


def _cached(cfg) -> bool:
    return bool(cfg.sampler.get("cache"))


def _lora(cfg) -> bool:
    m = cfg.model
    mode = cfg.get("mode")
    in_mode = mode is not None and not OmegaConf.is_missing(cfg, "mode") and mode.name == "lora"
    return m.lora_rank > 0 or bool(m.get("lora_ckpt")) or in_mode or "lora" in _task(cfg)


SAMPLING = ("sample", "train")  # the sampler section also shapes training's validation videos
PAIRINGS = [
    # sampling
    Pairing("infer.strength", "infer.video (video to video)", lambda c: c.infer.video is not None, ("sample",)),
    Pairing(
        "infer.negative_prompt",
        "sampler.uncond=negative_prompt",
        lambda c: _value(c.sampler.uncond) == "negative_prompt",
        ("sample",),
    ),
    Pairing("sampler.uncond", "guidance (sampler.guider=constant or dynamic)", _guided, SAMPLING, refuse=False),
    Pairing("sampler.guidance_scale", "guidance (sampler.guider=constant or dynamic)", _guided, SAMPLING, False),
    *[
        Pairing(
            f"sampler.{name}",
            "sampler.guider=dynamic",
            lambda c: _value(c.sampler.guider) == "dynamic",
            SAMPLING,
            refuse=False,
        )
        for name in ("dynamic_schedule", "dynamic_exp", "dynamic_num_steps")
    ],
    *[
        Pairing(f"sampler.{name}", "sampler.cache (a threshold > 0)", _cached, SAMPLING, refuse=False)
        for name in ("cache_order", "cache_warmup", "cache_max_run")
    ],
    *[
        Pairing(
            f"infer.{name}",
            "an image-to-video model (model=5b_i2v, 1.5_5b_i2v)",
            lambda c: is_image_to_video(c.model),
            ("sample",),
        )
        for name in ("image_latent_scaling", "image_posterior_sample")
    ],
    Pairing(
        "infer.head_frame_quirk", "a CogVideoX 1.5 model", lambda c: _value(c.model.generation) == "v1_5", ("sample",)
    ),
    Pairing(
        "model.lora_alpha", "LoRA (mode=lora, model.lora_rank or model.lora_ckpt)", _lora, ("sample", "train", "export")
    ),
    # training
    Pairing(
        "train.sat_weights", "train.ema_decay (e.g. 0.999)", lambda c: c.train.get("ema_decay") is not None, ("train",)
    ),
    Pairing("train.ema_decay", "task=fit (the DiT's weights)", lambda c: _task(c) == "fit", ("train",)),
    Pairing("train.resume", "task=fit", lambda c: _task(c) == "fit", ("train",)),
    *[
        Pairing(f"train.vae.{name}", "task=vae", lambda c: _task(c) == "vae", ("train",))
        for name in (
            "loss",
            "kl_weight",
            "foreground_weight",
            "edge_weight",
            "freeze_encoder",
            "holdout",
            "init",
            "clips_in_memory",
        )
    ],
    Pairing("data.cache_dtype", "task=precompute", lambda c: _task(c) == "precompute", ("train",)),
    *[
        Pairing(
            f"train.deepspeed.{name}",
            "a DeepSpeed strategy (train=deepspeed_zero2 ...)",
            lambda c: _value(c.train.strategy) == "deepspeed",
            ("train",),
        )
        for name in ("stage", "offload_optimizer", "offload_parameters")
    ],
    Pairing(
        "train.deepspeed.offload_parameters",
        "ZeRO stage 3 (train=deepspeed_zero3)",
        lambda c: c.train.deepspeed.stage == 3,
        ("train",),
    ),
    Pairing(
        "train.validation.prompts",
        "train.validation.every > 0",
        lambda c: c.train.validation.every > 0,
        ("train",),
        refuse=False,
    ),
    # export
    Pairing("lora_scale", "task=lora_to_diffusers", lambda c: _task(c) == "lora_to_diffusers", ("export",)),
    Pairing("max_shard_size", "task=to_diffusers", lambda c: _task(c) == "to_diffusers", ("export",)),
    Pairing("name", "task=sat_config", lambda c: _task(c) == "sat_config", ("export",)),
    Pairing(
        "lora",
        "task=lora_to_diffusers or merge_lora",
        lambda c: _task(c) in ("lora_to_diffusers", "merge_lora"),
        ("export",),
    ),
    Pairing(
        "source",
        "task=to_sat, lora_to_sat or sat_config",
        lambda c: _task(c) in ("to_sat", "lora_to_sat", "sat_config"),
        ("export",),
    ),
]

_SECTIONS = {"infer": InferConfig, "sampler": SamplerConfig, "model": ModelConfig, "train": TrainConfig}
_SECTIONS["data"] = DataConfig


def schema_default(option: str) -> Any:
    """The schema's default of a dotted option (a top-level key: the export's)."""
    *path, name = option.split(".")
    node: Any = _SECTIONS[path[0]]() if path else ExportConfig()
    for part in path[1:]:
        node = getattr(node, part)
    return _value(getattr(node, name))


def command_of(cfg) -> str:
    """Which command's config `cfg` is: sample, train or export."""
    if "train" in cfg:
        return "train"
    return "sample" if "infer" in cfg else "export"


def _missing(cfg, option: str) -> bool:
    section = option.split(".")[0]
    return "." in option and (section not in cfg or OmegaConf.is_missing(cfg, section) or cfg.get(section) is None)


def unpaired(cfg) -> list[tuple[Pairing, Any]]:
    """(pairing, value) for every option of this command's config that is set while what it acts with is off."""
    command, found = command_of(cfg), []
    for pairing in PAIRINGS:
        if command not in pairing.commands or _missing(cfg, pairing.option):
            continue
        value = _value(OmegaConf.select(cfg, pairing.option))
        if value != schema_default(pairing.option) and not pairing.active(cfg):
            found.append((pairing, value))
    return found


def _shown(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def ignored_options(cfg) -> list[str]:
    """`option=value` of every set option that this run ignores (a warned pairing), for the sample's sidecar."""
    return [f"{p.option}={_shown(v)}" for p, v in unpaired(cfg) if not p.refuse]


_warned: set[str] = set()  # check_values runs more than once per config: each warning is logged once


def check_pairings(cfg) -> None:
    """Refuse the first set option whose partner is off (a refusing pairing); log the ignored ones once."""
    for pairing, value in unpaired(cfg):
        default = _shown(schema_default(pairing.option))
        if pairing.refuse:
            raise CogvidError(
                f"{pairing.option}={_shown(value)} acts only with {pairing.acts_with}: set that too, or leave "
                f"{pairing.option} at its default ({default})"
            )
        message = f"{pairing.option}={_shown(value)} is ignored: it acts only with {pairing.acts_with}"
        if message not in _warned:
            _warned.add(message)
            log.warning(message)
