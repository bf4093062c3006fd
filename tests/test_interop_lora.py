"""LoRA: SAT -> diffusers (`pytorch_lora_weights.safetensors`), diffusers -> SAT, and merging into the base.

The adapter file is checked two ways: with diffusers' own `load_lora_weights` at weight 1.0 (it needs `peft`, which
the dev extra installs), and by applying it as diffusers' loader reads it, W + B A * alpha / r with alpha and r from
the file's `lora_adapter_metadata` (alpha = r when absent).
"""

from __future__ import annotations

import json

import diffusers
import pytest
import torch
from conftest import FIXTURE, reference
from safetensors import safe_open
from test_interop import (
    assert_parity,
    diffusers_transformer,
    inputs,
    random_dit,
    tiny_model_cfg,
    to_diffusers_state,
)

import cogvid
from cogvid.config.schema import LoraScale
from cogvid.interop.lora import export_lora, import_lora, merge_lora
from cogvid.models.dit import DiffusionTransformer
from cogvid.models.state import load_backbone_state
from cogvid.sat.checkpoint import read_sat_state_dict, save_sat_checkpoint
from cogvid.utils.errors import CogvidError

LORA_FILE = "pytorch_lora_weights.safetensors"


def base_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain model inside a SAT LoRA checkpoint (`X.original.weight` -> `X.weight`, adapters dropped)."""
    return {k.replace(".original.", "."): v for k, v in state.items() if ".matrix_" not in k}


def apply_lora_as_diffusers_reads_it(state: dict[str, torch.Tensor], lora_file) -> dict[str, torch.Tensor]:
    with safe_open(str(lora_file), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    out = dict(state)
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        module = key.removeprefix("transformer.").split(".lora_A.")[0]
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        r = a.shape[0]
        scale = float(meta.get("transformer.lora_alpha", r)) / int(meta.get("transformer.r", r))
        out[f"{module}.weight"] = state[f"{module}.weight"] + b @ a * scale
    return out


def lora_fixture_cfg():
    return cogvid.compose(["model=tiny", "mode=lora", "model.lora_rank=4"]).model


@pytest.mark.parametrize("scale", [LoraScale.metadata, LoraScale.fold])
def test_fixture_lora_export_reproduces_the_original_output(tmp_path, scale):
    cfg = lora_fixture_cfg()
    report = export_lora(cfg, FIXTURE / "lora_ckpt", tmp_path, scale)
    assert report.mapped == 8 * cfg.num_layers
    state, _ = read_sat_state_dict(FIXTURE / "lora_ckpt")
    plain_cfg = cogvid.compose(["model=tiny"]).model
    merged = apply_lora_as_diffusers_reads_it(to_diffusers_state(plain_cfg, base_state(state)), tmp_path / LORA_FILE)
    ref = reference("lora_forward")
    assert_parity(diffusers_transformer(plain_cfg, merged), ref["out"], ref["x"], ref["timesteps"], ref["context"])


def load_in_diffusers(plain_cfg, base: dict[str, torch.Tensor], lora_dir):
    """diffusers' own path: a pipeline around the base transformer, `load_lora_weights`, adapter weight 1.0."""
    transformer = diffusers_transformer(plain_cfg, to_diffusers_state(plain_cfg, base))
    pipe = diffusers.CogVideoXPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=transformer, scheduler=diffusers.DDIMScheduler()
    )
    pipe.load_lora_weights(str(lora_dir), adapter_name="sat")
    pipe.set_adapters(["sat"], [1.0])
    return pipe.transformer


@pytest.mark.parametrize("scale", [LoraScale.metadata, LoraScale.fold])
def test_fixture_lora_loads_in_diffusers_at_weight_one(tmp_path, scale):
    export_lora(lora_fixture_cfg(), FIXTURE / "lora_ckpt", tmp_path, scale)
    state, _ = read_sat_state_dict(FIXTURE / "lora_ckpt")
    transformer = load_in_diffusers(cogvid.compose(["model=tiny"]).model, base_state(state), tmp_path)
    ref = reference("lora_forward")
    assert_parity(transformer, ref["out"], ref["x"], ref["timesteps"], ref["context"])


def random_lora_checkpoint(tmp_path, cfg, seed=3):
    model = random_dit(cfg, seed)
    save_sat_checkpoint(model, tmp_path / "sat_lora", 1)
    return model, tmp_path / "sat_lora"


def test_lora_on_a_5b_style_model_with_other_layer_count(tmp_path):
    cfg = tiny_model_cfg("5b", "num_layers=3", "lora_rank=4", "lora_alpha=2.0")
    model, ckpt = random_lora_checkpoint(tmp_path, cfg)
    report = export_lora(cfg, ckpt, tmp_path / "out", LoraScale.metadata)
    assert report.mapped == 8 * 3
    plain_cfg = tiny_model_cfg("5b", "num_layers=3")
    state, _ = read_sat_state_dict(ckpt)
    merged = apply_lora_as_diffusers_reads_it(
        to_diffusers_state(plain_cfg, base_state(state)), tmp_path / "out" / LORA_FILE
    )
    x, timesteps, context = inputs(cfg)
    with torch.no_grad():
        expected = model(x, timesteps, context)
    assert_parity(diffusers_transformer(plain_cfg, merged), expected, x, timesteps, context)
    assert_parity(load_in_diffusers(plain_cfg, base_state(state), tmp_path / "out"), expected, x, timesteps, context)

    # diffusers -> SAT: the adapters come back bit for bit (alpha/r read from the metadata)
    import_lora(cfg, tmp_path / "out", tmp_path / "back", base_ckpt=None)
    back, _ = read_sat_state_dict(tmp_path / "back")
    adapters = {k: v for k, v in state.items() if ".matrix_" in k}
    assert back.keys() == adapters.keys() and all(torch.equal(back[k], v) for k, v in adapters.items())


def test_lora_round_trip_with_base_and_folded_scale(tmp_path):
    cfg = tiny_model_cfg("1.5_5b", "lora_rank=4", "lora_alpha=1.0")
    model, ckpt = random_lora_checkpoint(tmp_path, cfg)
    export_lora(cfg, ckpt, tmp_path / "folded", LoraScale.fold)
    plain_cfg = tiny_model_cfg("1.5_5b")
    state, _ = read_sat_state_dict(ckpt)
    base = DiffusionTransformer(plain_cfg)
    load_backbone_state(base, base_state(state))
    save_sat_checkpoint(base, tmp_path / "base", 1)
    import_lora(cfg, tmp_path / "folded", tmp_path / "back", base_ckpt=str(tmp_path / "base"))
    back, _ = read_sat_state_dict(tmp_path / "back")
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], v) for k, v in state.items())  # r = 4: the 1/4 scale is exact


def test_merge_lora_gives_the_lora_models_output(tmp_path):
    cfg = lora_fixture_cfg()
    merge_lora(cfg, FIXTURE / "lora_ckpt", None, tmp_path / "merged", None)
    plain_cfg = cogvid.compose(["model=tiny"]).model
    model = DiffusionTransformer(plain_cfg).eval()
    state, _ = read_sat_state_dict(tmp_path / "merged")
    load_backbone_state(model, state)
    ref = reference("lora_forward")
    with torch.no_grad():
        out = model(ref["x"], ref["timesteps"], ref["context"])
    assert (out - ref["out"]).abs().max() <= 1e-5

    # the same from a base checkpoint plus an adapter-only file (what lora_to_sat writes without a base)
    export_lora(cfg, FIXTURE / "lora_ckpt", tmp_path / "diffusers_lora", LoraScale.metadata)
    import_lora(cfg, tmp_path / "diffusers_lora", tmp_path / "adapters", base_ckpt=None)
    base_model = DiffusionTransformer(plain_cfg)
    load_backbone_state(base_model, base_state(read_sat_state_dict(FIXTURE / "lora_ckpt")[0]))
    save_sat_checkpoint(base_model, tmp_path / "base", 1)
    merge_lora(cfg, tmp_path / "adapters", str(tmp_path / "base"), tmp_path / "merged2", None)
    again, _ = read_sat_state_dict(tmp_path / "merged2")
    assert all(torch.equal(again[k], v) for k, v in state.items())


def test_lora_inputs_are_checked(tmp_path):
    cfg = lora_fixture_cfg()
    with pytest.raises(CogvidError, match="holds no LoRA adapters"):
        export_lora(cfg, FIXTURE / "dit_ckpt", tmp_path / "a", LoraScale.metadata)
    other = tiny_model_cfg("5b")
    with pytest.raises(CogvidError, match="does not fit model="):
        export_lora(other, FIXTURE / "lora_ckpt", tmp_path / "b", LoraScale.metadata)
    with pytest.raises(CogvidError, match="holds only adapters"):
        export_lora(cfg, FIXTURE / "lora_ckpt", tmp_path / "c", LoraScale.metadata)
        import_lora(cfg, tmp_path / "c", tmp_path / "d", base_ckpt=None)
        merge_lora(cfg, tmp_path / "d", None, tmp_path / "e", None)
