"""The config tree: every file in every group composes, short names equal long ones, typos fail early."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import cogvid
from cogvid.config.compose import conf_dir

GROUPS = ["model", "sampler", "mode", "infer"]


@pytest.mark.parametrize(
    "group,option",
    [(g, p.stem) for g in GROUPS for p in sorted((conf_dir() / g).glob("*.yaml"))],
)
def test_every_config_composes(group, option):
    cfg = cogvid.compose([f"{group}={option}"])
    assert cfg[group] is not None


@pytest.mark.parametrize(
    "short,full",
    [
        ("2b", "cogvideox_2b"),
        ("5b", "cogvideox_5b"),
        ("5b_i2v", "cogvideox_5b_i2v"),
        ("1.5_5b", "cogvideox1.5_5b"),
        ("1.5_5b_i2v", "cogvideox1.5_5b_i2v"),
    ],
)
def test_short_names_select_the_same_values(short, full):
    assert cogvid.compose([f"model={short}"]).model == cogvid.compose([f"model={full}"]).model


# the released configs: the 5B values, and what each variant changes
FIVE_B = dict(
    hidden_size=3072,
    num_layers=42,
    num_attention_heads=48,
    in_channels=16,
    patch_size_t=1,
    pos_embed="rope",
    learnable_pos_embed=False,
    text_length=226,
    scale_factor=0.7,
    shift_scale=1.0,
    ofs_embed_dim=None,
    generation="v1_0",
    dtype="bf16",
)
ONE_FIVE = dict(generation="v1_5", patch_size_t=2, text_length=224, num_frames=81, latent_height=300, latent_width=300)
RELEASED = {
    "2b": {
        **FIVE_B,
        "hidden_size": 1920,
        "num_layers": 30,
        "num_attention_heads": 30,
        "pos_embed": "sincos",
        "scale_factor": 1.15258426,
        "shift_scale": 3.0,
        "dtype": "fp16",
    },
    "5b": FIVE_B,
    "5b_i2v": {**FIVE_B, "in_channels": 32, "learnable_pos_embed": True, "noised_image_input": True},
    "1.5_5b": {**FIVE_B, **ONE_FIVE, "latent_input": True, "group_num": 40},
    "1.5_5b_i2v": {
        **FIVE_B,
        **ONE_FIVE,
        "in_channels": 32,
        "ofs_embed_dim": 512,
        "noised_image_input": True,
        "noised_image_dropout": 0.05,
    },
}


@pytest.mark.parametrize("variant", sorted(RELEASED))
def test_model_configs_hold_the_released_values(variant):
    model = OmegaConf.to_container(cogvid.compose([f"model={variant}"]).model, enum_to_str=True)
    for key, value in RELEASED[variant].items():
        assert model[key] == value, (variant, key)
    assert model["time_embed_dim"] == 512 and model["out_channels"] == 16 and model["patch_size"] == 2


def test_sampler_defaults_are_sats():
    s = OmegaConf.to_container(cogvid.compose([]).sampler, enum_to_str=True)
    assert s["solver"] == "dpmpp2m_sde" and s["num_steps"] == 50 and s["guidance_scale"] == 6.0
    assert s["guider"] == "dynamic" and s["dynamic_exp"] == 5.0 and s["dynamic_num_steps"] == 50
    assert s["uncond"] == "zeros" and s["zero_snr_rescale"] == "subset"


def test_lora_mode_sets_rank_unless_the_model_names_one(tmp_path: Path):
    assert cogvid.compose(["mode=lora"]).model.lora_rank == 128
    assert cogvid.compose([]).model.lora_rank == 0
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("defaults:\n  - tiny\n  - _self_\nlora_rank: 4\n")
    assert cogvid.compose(["mode=lora", "model=mine"], config_dirs=[tmp_path]).model.lora_rank == 4


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["model.hiden_size=3"], "hiden_size"),
        (["sampler.solver=unipc"], "unipc"),
        (["model=7b"], "model/7b"),
        (["sampler.num_steps=many"], "many"),
        (["infer.promt=hi"], "promt"),
    ],
)
def test_bad_configs_fail_at_compose_time_naming_the_problem(overrides, fragment):
    with pytest.raises(cogvid.CogvidError) as err:
        cogvid.compose(overrides)
    message = str(err.value)
    assert fragment in message and "\n" not in message


def test_misspelt_key_in_a_config_file_fails(tmp_path: Path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "typo.yaml").write_text("defaults:\n  - tiny\n  - _self_\nnum_layer: 3\n")
    with pytest.raises(cogvid.CogvidError, match="num_layer"):
        cogvid.compose(["model=typo"], config_dirs=[tmp_path])
