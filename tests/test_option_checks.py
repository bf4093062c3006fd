"""Out-of-range option values are refused with one line naming the option, before any weights load or any file is
written: for cogvid-sample, cogvid-train (every task) and cogvid-export."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cogvid.config.checks import check_values
from cogvid.config.compose import compose
from cogvid.config.pairings import PAIRINGS, ignored_options, schema_default
from cogvid.inference.run import run_sample
from cogvid.interop.run import run_export
from cogvid.training.run import run_train
from cogvid.utils.errors import CogvidError

TORCH_THREADS = 1


@pytest.fixture
def a_file(tmp_path) -> Path:
    f = tmp_path / "notes.txt"
    f.write_text("not a folder\n")
    return f


SAMPLE_CASES = [
    ("infer.seed=-1", "infer.seed=-1 must be an integer in [0, 2**63 - 1]"),
    ("infer.seed=18446744073709551616", "infer.seed=18446744073709551616 must be an integer"),
    ("infer.seed=9223372036854775808", "infer.seed=9223372036854775808 must be an integer"),
    ("sampler.guidance_scale=nan", "sampler.guidance_scale=nan must be a finite number"),
    ("sampler.guidance_scale=inf", "sampler.guidance_scale=inf must be a finite number"),
    ("sampler.guidance_scale=-inf", "sampler.guidance_scale=-inf must be a finite number"),
    ("infer.vae_tile=[0,4]", "infer.vae_tile=[0, 4] must be [h, w] in latents, both >= 1"),
    ("infer.vae_tile=[-2,4]", "infer.vae_tile=[-2, 4] must be"),
    ("infer.vae_tile=[4]", "infer.vae_tile=[4] must be"),
    ("sampler.num_steps=0", "sampler.num_steps=0 must be >= 1"),
    ("infer.num_videos_per_prompt=0", "infer.num_videos_per_prompt=0 must be >= 1"),
    ("infer.fps=0", "infer.fps=0 must be >= 1"),
]


@pytest.mark.parametrize(("override", "message"), SAMPLE_CASES)
def test_cogvid_sample_refuses_before_loading(tmp_path, override, message):
    out = tmp_path / "out"
    cfg = compose(["model=shapes", "infer.prompt=a red circle moving right", f"infer.output_dir={out}", override])
    with pytest.raises(CogvidError, match=message.replace("[", r"\[").replace("*", r"\*")) as info:
        run_sample(cfg)
    assert "\n" not in str(info.value) and not out.exists()


@pytest.mark.parametrize("under", ["", "sub/dir"])
def test_an_output_dir_that_is_a_file_or_under_one_is_refused(tmp_path, a_file, under):
    target = a_file / under if under else a_file
    cases = [
        (run_sample, compose(["model=shapes", "infer.prompt=a red circle", f"infer.output_dir={target}"]), "infer"),
        (run_train, compose(["model=shapes", f"data.root={tmp_path}", f"train.output_dir={target}"], "train"), "train"),
        (run_train, compose(["model=shapes", "task=precompute", f"data.cache={target}"], "train"), "data.cache"),
        (run_export, compose(["task=to_diffusers", "model=shapes", f"out={target}"], "export"), "out="),
    ]
    for run, cfg, option in cases:
        with pytest.raises(CogvidError, match=f"{option}.*lies under a file, not a folder") as info:
            run(cfg)
        assert "\n" not in str(info.value)
    assert a_file.read_text() == "not a folder\n" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


TRAIN_CASES = [
    ("train.lr=-1", "train.lr=-1.0 must be > 0"),
    ("train.lr=nan", "train.lr=nan must be a finite number"),
    ("train.lr=0", "train.lr=0.0 must be > 0"),
    ("data.num_workers=-1", "data.num_workers=-1 must be >= 0"),
    ("data.fps=0", "data.fps=0 must be >= 1"),
    ("data.fps=-8", "data.fps=-8 must be >= 1"),
    ("train.seed=-5", "train.seed=-5 must be an integer"),
    ("train.weight_decay=-0.1", "train.weight_decay=-0.1 must be >= 0"),
    ("train.gradient_clip=inf", "train.gradient_clip=inf must be a finite number"),
    ("train.betas=[0.9,1.5]", r"train.betas=\[0.9, 1.5\] must be two numbers in \[0, 1\)"),
    ("train.validation.seeds=[1,-2]", r"train.validation.seeds\[1\]=-2 must be an integer"),
    ("train.ema_decay=1", r"train.ema_decay=1.0 must lie in \(0, 1\)"),
    ("train.ema_decay=0", r"train.ema_decay=0.0 must lie in \(0, 1\)"),
    ("train.ema_decay=-0.5", r"train.ema_decay=-0.5 must lie in \(0, 1\)"),
    ("train.ema_decay=nan", r"train.ema_decay=nan must lie in \(0, 1\)"),
    ("train.sat_weights=ema", "train.sat_weights=ema acts only with train.ema_decay"),
]


@pytest.mark.parametrize("task", ["fit", "precompute", "vae"])
@pytest.mark.parametrize(("override", "message"), TRAIN_CASES)
def test_cogvid_train_refuses_before_reading_data(tmp_path, task, override, message):
    out = tmp_path / "out"
    cfg = compose(
        [
            "model=shapes",
            f"task={task}",
            "data.root=/nonexistent",
            f"data.cache={tmp_path / 'cache'}",
            f"train.output_dir={out}",
            override,
        ],
        "train",
    )
    with pytest.raises(CogvidError, match=message) as info:
        run_train(cfg)
    assert "\n" not in str(info.value) and list(tmp_path.iterdir()) == []


# Options that act only with another one (cogvid.config.pairings): refused when set without it, or for the sampler's
# guidance options warned about and listed in the sidecar. (command, overrides, the option's message fragment)
REFUSED_PAIRINGS = [
    ("sample", ["infer.strength=0.5"], "infer.strength=0.5 acts only with infer.video"),
    ("sample", ["infer.negative_prompt=blurry"], "infer.negative_prompt=blurry acts only with sampler.uncond"),
    ("sample", ["infer.image_latent_scaling=unscaled"], "infer.image_latent_scaling=unscaled acts only with an image"),
    ("sample", ["infer.image_posterior_sample=false"], "infer.image_posterior_sample=false acts only with an image"),
    ("sample", ["infer.head_frame_quirk=true"], "infer.head_frame_quirk=true acts only with a CogVideoX 1.5"),
    ("sample", ["model.lora_alpha=8"], "model.lora_alpha=8.0 acts only with LoRA"),
    ("train", ["task=fit", "train.sat_weights=ema"], "train.sat_weights=ema acts only with train.ema_decay"),
    ("train", ["task=precompute", "train.ema_decay=0.99"], "train.ema_decay=0.99 acts only with task=fit"),
    ("train", ["task=precompute", "train.resume=auto"], "train.resume=auto acts only with task=fit"),
    ("train", ["task=fit", "train.vae.kl_weight=0.1"], "train.vae.kl_weight=0.1 acts only with task=vae"),
    ("train", ["task=fit", "train.vae.loss=mse"], "train.vae.loss=mse acts only with task=vae"),
    ("train", ["task=fit", "data.cache_dtype=bf16"], "data.cache_dtype=bf16 acts only with task=precompute"),
    ("train", ["task=fit", "model.lora_alpha=4"], "model.lora_alpha=4.0 acts only with LoRA"),
    ("train", ["train.deepspeed.stage=3"], "train.deepspeed.stage=3 acts only with a DeepSpeed strategy"),
    ("train", ["train=deepspeed_zero2", "train.deepspeed.offload_parameters=true"], "acts only with ZeRO stage 3"),
    ("export", ["task=to_diffusers", "lora_scale=fold"], "lora_scale=fold acts only with task=lora_to_diffusers"),
    ("export", ["task=to_sat", "max_shard_size=1GB"], "max_shard_size=1GB acts only with task=to_diffusers"),
    ("export", ["task=to_diffusers", "name=mine"], "name=mine acts only with task=sat_config"),
    ("export", ["task=to_sat", "lora=/x"], "lora=/x acts only with task=lora_to_diffusers or merge_lora"),
    ("export", ["task=merge_lora", "source=/x"], "source=/x acts only with task=to_sat"),
]


def _compose(command: str, overrides: list[str]):
    base = {"sample": ["model=shapes", "infer.prompt=a red circle"], "train": ["model=shapes"]}
    return compose(base.get(command, ["model=shapes"]) + overrides, *([command] if command != "sample" else []))


@pytest.mark.parametrize(("command", "overrides", "message"), REFUSED_PAIRINGS)
def test_an_option_without_its_partner_is_refused(command, overrides, message):
    with pytest.raises(CogvidError, match=message.replace("(", r"\(")) as info:
        check_values(_compose(command, overrides))
    assert "\n" not in str(info.value) and "at its default" in str(info.value)


ACCEPTED_PAIRINGS = [  # the same options with their partner on
    ("sample", ["infer.negative_prompt=blurry", "sampler.uncond=negative_prompt"]),
    ("sample", ["model=5b_i2v", "infer.image_latent_scaling=unscaled", "infer.image_posterior_sample=false"]),
    ("sample", ["model=1.5_5b", "infer.head_frame_quirk=true"]),
    ("sample", ["adapter=cyan"]),  # model.lora_alpha=16 with the adapter's model.lora_ckpt
    ("sample", ["sampler.cache=0.3", "sampler.cache_order=2", "sampler.cache_warmup=4", "sampler.cache_max_run=5"]),
    ("train", ["task=fit", "train.ema_decay=0.999", "train.sat_weights=ema"]),
    ("train", ["task=vae", "train.vae.kl_weight=0.1", "train.vae.loss=mse"]),
    ("train", ["task=precompute", "data.cache_dtype=bf16"]),
    ("train", ["mode=lora", "model.lora_alpha=4"]),
    ("train", ["train=deepspeed_zero3", "train.deepspeed.offload_parameters=true"]),
    ("export", ["task=lora_to_diffusers", "lora_scale=fold", "lora=/x"]),
    ("export", ["task=sat_config", "name=mine", "source=/x"]),
]


@pytest.mark.parametrize(("command", "overrides"), ACCEPTED_PAIRINGS)
def test_an_option_with_its_partner_is_accepted(command, overrides):
    cfg = _compose(command, overrides)
    check_values(cfg)
    assert ignored_options(cfg) == []


WARNED_PAIRINGS = [
    (["sampler.guider=none", "sampler.guidance_scale=9"], ["sampler.guidance_scale=9.0"]),
    (["sampler.guider=none", "sampler.uncond=negative_prompt"], ["sampler.uncond=negative_prompt"]),
    (
        ["sampler.guider=constant", "sampler.dynamic_exp=3", "sampler.dynamic_schedule=corrected"],
        ["sampler.dynamic_schedule=corrected", "sampler.dynamic_exp=3.0"],
    ),
    (["sampler.cache_order=2", "sampler.cache_warmup=4"], ["sampler.cache_order=2", "sampler.cache_warmup=4"]),
    (["sampler.cache=0", "sampler.cache_order=0"], ["sampler.cache_order=0"]),
    (["sampler.cache_max_run=null"], ["sampler.cache_max_run=null"]),
]


@pytest.mark.parametrize(("overrides", "ignored"), WARNED_PAIRINGS)
def test_an_ignored_sampler_option_is_one_warning_and_listed(caplog, overrides, ignored):
    cfg = _compose("sample", overrides)
    with caplog.at_level(logging.WARNING, logger="cogvid.config.pairings"):
        check_values(cfg)
        check_values(cfg)  # the commands check more than once: each warning is logged once
    assert ignored_options(cfg) == ignored
    warned = [r.getMessage() for r in caplog.records if "is ignored: it acts only with" in r.getMessage()]
    assert [w.split(" ")[0] for w in warned] == ignored


def test_validation_prompts_without_validation_are_ignored():
    cfg = _compose("train", ["train.validation.prompts=[a red circle]"])
    check_values(cfg)
    assert ignored_options(cfg) == ["train.validation.prompts=['a red circle']"]


def test_every_pairing_names_an_option_of_the_schema():
    for pairing in PAIRINGS:
        schema_default(pairing.option)  # raises AttributeError for a misspelt option


def test_strength_without_a_video_writes_nothing(tmp_path):
    out = tmp_path / "out"
    cfg = _compose("sample", ["infer.strength=0.5", f"infer.output_dir={out}"])
    with pytest.raises(CogvidError, match="infer.strength=0.5 acts only with infer.video"):
        run_sample(cfg)
    assert not out.exists()


def test_the_sidecar_records_strength_and_ignored_options(tmp_path):
    from cogvid.inference.plan import plan_sample

    cfg = _compose("sample", ["sampler.guider=none", "sampler.guidance_scale=9", f"infer.output_dir={tmp_path}"])
    sidecar = plan_sample(cfg).sidecar  # what every video's sidecar says of the run
    assert sidecar["strength"] is None and sidecar["ignored"] == ["sampler.guidance_scale=9.0"]
