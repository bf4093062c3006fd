"""SAT checkpoints: the fixture's SAT folders load strictly and reproduce SAT's forward; saves round-trip."""

from __future__ import annotations

import os
import random
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cogvid import CogvidError, compose
from cogvid.models.dit import DiffusionTransformer
from cogvid.models.state import load_backbone_state
from cogvid.sat import checkpoint as ckpt
from cogvid.sat.checkpoint import read_sat_state_dict, resolve_sat_checkpoint, save_sat_checkpoint
from cogvid.utils.user_files import safe_torch_load

FIXTURE = Path(__file__).parent / "fixtures" / "sat_tiny_2b"
DIT_CKPT = FIXTURE / "dit_ckpt"
LORA_CKPT = FIXTURE / "lora_ckpt"
DIT_PT = DIT_CKPT / "1000" / "mp_rank_00_model_states.pt"
TINY_LORA = ["model=tiny", "mode=lora", "model.lora_rank=4"]


def build(overrides=("model=tiny",)) -> DiffusionTransformer:
    torch.manual_seed(0)
    return DiffusionTransformer(compose(list(overrides)).model).eval()


def forward(model, io):
    with torch.no_grad():
        return model(io["x"], io["timesteps"], io["context"])


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def one_line_error(fn, *args, match: str | None = None) -> str:
    with pytest.raises(CogvidError) as info:
        fn(*args)
    message = str(info.value)
    assert message and "\n" not in message, message
    if match is not None:
        assert match in message, message
    return message


# --- (1)-(3) the fixture's SAT checkpoints


def test_dit_checkpoint_reproduces_sat_forward():
    model = build()
    state, aside = read_sat_state_dict(DIT_CKPT)
    report = load_backbone_state(model, state)
    assert report.loaded == len(model.state_dict()) == len(state)
    assert report.routed_to_original == 0 and report.adapters_at_init == ()
    io = load_file(FIXTURE / "dit_forward.safetensors")
    assert max_diff(forward(model, io), io["out"]) <= 1e-5


def test_lora_checkpoint_into_lora_model():
    model = build(TINY_LORA)
    report = load_backbone_state(model, read_sat_state_dict(LORA_CKPT)[0])
    assert report.adapters_at_init == () and report.routed_to_original == 0
    io = load_file(FIXTURE / "lora_forward.safetensors")
    assert max_diff(forward(model, io), io["out"]) <= 1e-5


def test_plain_checkpoint_into_lora_model_keeps_adapters_at_init(caplog):
    model = build(TINY_LORA)
    with caplog.at_level("WARNING", logger="cogvid.sat.checkpoint"):
        report = load_backbone_state(model, read_sat_state_dict(DIT_CKPT)[0])
    # 2 layers x (qkv: 3 A + 3 B, dense: 1 A + 1 B); weight + bias of qkv and dense routed
    assert len(report.adapters_at_init) == 16
    assert all(".matrix_A." in k or ".matrix_B." in k for k in report.adapters_at_init)
    assert report.routed_to_original == 8
    assert "16 adapter matrices" in caplog.text
    io = load_file(FIXTURE / "lora_forward.safetensors")
    assert max_diff(forward(model, io), io["out_base"]) <= 1e-5  # matrix_B starts at zero


def test_lora_checkpoint_into_plain_model_names_the_rank():
    one_line_error(load_backbone_state, build(), read_sat_state_dict(LORA_CKPT)[0], match="mode=lora model.lora_rank=4")


def test_lora_rank_mismatch_names_the_rank():
    model = build(["model=tiny", "mode=lora", "model.lora_rank=8"])
    one_line_error(load_backbone_state, model, read_sat_state_dict(LORA_CKPT)[0], match="model.lora_rank=4")


def test_dtype_converted_on_copy():
    model = build()
    state = {k: v.to(torch.bfloat16) for k, v in read_sat_state_dict(DIT_CKPT)[0].items()}
    report = load_backbone_state(model, state)
    assert report.checkpoint_dtypes == ("bfloat16",) and report.model_dtype == "float32"
    assert model.mixins["patch_embed"].text_proj.weight.dtype == torch.float32
    key = "transformer.layers.0.mlp.dense_h_to_4h.weight"
    assert torch.equal(model.state_dict()[key], state[key].float())

    half = build()
    load_backbone_state(half, read_sat_state_dict(DIT_CKPT)[0], dtype=torch.bfloat16)
    assert half.mixins["patch_embed"].text_proj.weight.dtype == torch.bfloat16


# --- (4) saving


def test_save_round_trip_matches_fixture_layout(tmp_path):
    model = build()
    load_backbone_state(model, read_sat_state_dict(DIT_CKPT)[0])
    weights = save_sat_checkpoint(model, tmp_path / "out", 1000)

    assert weights == tmp_path / "out" / "1000" / "mp_rank_00_model_states.pt"
    assert (tmp_path / "out" / "latest").read_text() == "1000"
    config = (tmp_path / "out" / "model_config.json").read_bytes()
    assert config == (DIT_CKPT / "model_config.json").read_bytes()
    assert resolve_sat_checkpoint(tmp_path / "out") == weights
    assert not [p for p in (tmp_path / "out").rglob(".*tmp*")]

    saved = safe_torch_load(weights)["module"]
    reference = safe_torch_load(DIT_PT)["module"]
    assert list(saved) == list(reference)
    for k, v in reference.items():
        assert saved[k].shape == v.shape and saved[k].dtype == v.dtype, k
        assert saved[k].is_contiguous()

    again = build()
    load_backbone_state(again, read_sat_state_dict(tmp_path / "out")[0])
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_save_lora_model_matches_lora_fixture_keys(tmp_path):
    model = build(TINY_LORA)
    load_backbone_state(model, read_sat_state_dict(LORA_CKPT)[0])
    saved = safe_torch_load(save_sat_checkpoint(model, tmp_path, 7))["module"]
    reference = safe_torch_load(resolve_sat_checkpoint(LORA_CKPT))["module"]
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in reference.items()}
    # a state dict (what ZeRO-3 training gathers) is written exactly as its module
    from_dict = safe_torch_load(save_sat_checkpoint(model.state_dict(), tmp_path / "dict", 7))["module"]
    assert from_dict.keys() == saved.keys() and all(torch.equal(from_dict[k], saved[k]) for k in saved)


def test_save_writes_views_as_their_own_tensors(tmp_path):
    class Views(torch.nn.Module):
        def __init__(self):
            super().__init__()
            base = torch.arange(24.0).reshape(4, 6)
            self.register_buffer("row", base[1])  # a view into a larger storage
            self.register_buffer("col", base[:, 2])  # non-contiguous

    module = Views()
    weights = save_sat_checkpoint(module, tmp_path, 1, extra={"iteration": 1})
    loaded = safe_torch_load(weights)
    assert loaded["iteration"] == 1
    row, col = loaded["module"]["model.diffusion_model.row"], loaded["module"]["model.diffusion_model.col"]
    assert torch.equal(row, module.row) and torch.equal(col, module.col)
    assert row.untyped_storage().nbytes() == row.nbytes and col.is_contiguous()


def test_interrupted_save_never_becomes_latest(tmp_path, monkeypatch):
    model = build()
    first = save_sat_checkpoint(model, tmp_path, 1000)

    written = []

    def broken_copy(t):  # the writer copies each tensor out just before its record: stop after a few records
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(t)
        return t.detach().clone()

    monkeypatch.setattr(ckpt, "_alone_on_storage", broken_copy)
    with pytest.raises(KeyboardInterrupt):
        save_sat_checkpoint(model, tmp_path, 2000)
    assert (tmp_path / "latest").read_text() == "1000"
    assert resolve_sat_checkpoint(tmp_path) == first
    assert not (tmp_path / "2000" / "mp_rank_00_model_states.pt").exists()
    assert not list((tmp_path / "2000").iterdir())  # the temp file is cleaned up


def test_save_rejects_bad_iteration(tmp_path):
    for bad in (0, -3, "1000", True):
        with pytest.raises(ValueError):
            save_sat_checkpoint(build(), tmp_path, bad)


# --- resolving and reading


def test_resolve_variants(tmp_path):
    assert resolve_sat_checkpoint(DIT_CKPT) == DIT_PT
    assert resolve_sat_checkpoint(DIT_PT) == DIT_PT
    assert resolve_sat_checkpoint(DIT_CKPT / "1000") == DIT_PT  # the iteration folder itself
    release = tmp_path / "rel"
    (release / "release").mkdir(parents=True)
    shutil.copy(DIT_PT, release / "release" / "mp_rank_00_model_states.pt")
    (release / "latest").write_text("release\n")
    assert resolve_sat_checkpoint(release) == release / "release" / "mp_rank_00_model_states.pt"


@pytest.mark.parametrize("wrapper", ["module", "model", "state_dict"])
def test_read_wrappers_and_aside(tmp_path, wrapper):
    raw = safe_torch_load(DIT_PT)["module"]
    extra = {"first_stage_model.encoder.conv_in.weight": torch.zeros(2), "conditioner.x": torch.ones(1)}
    torch.save({wrapper: {**raw, **extra}, "iteration": 5}, tmp_path / "c.pt")
    state, aside = read_sat_state_dict(tmp_path / "c.pt")
    assert set(state) == {k.removeprefix("model.diffusion_model.") for k in raw}
    assert set(aside) == {"iteration", *extra}


def test_read_accepts_already_stripped_keys(tmp_path):
    raw = safe_torch_load(DIT_PT)["module"]
    stripped = {k.removeprefix("model.diffusion_model."): v for k, v in raw.items()}
    torch.save(stripped, tmp_path / "bare.pt")
    torch.save({"module": stripped}, tmp_path / "wrapped.pt")
    for name in ("bare.pt", "wrapped.pt"):
        state, aside = read_sat_state_dict(tmp_path / name)
        assert set(state) == set(stripped) and aside == {}
        load_backbone_state(build(), state)


def test_read_rejects_non_dit_state(tmp_path):
    torch.save({"module": {"encoder.conv_in.weight": torch.zeros(1)}}, tmp_path / "vae.pt")
    one_line_error(read_sat_state_dict, tmp_path / "vae.pt", match="no DiT weights")
    torch.save({"iteration": 3}, tmp_path / "none.pt")
    one_line_error(read_sat_state_dict, tmp_path / "none.pt", match="'module'")


# --- (5) bad inputs, each one line


def test_checkpoint_of_another_variant(tmp_path):
    small = build(["model=tiny", "model.hidden_size=32", "model.num_attention_heads=1"])
    save_sat_checkpoint(small, tmp_path, 10)
    state = read_sat_state_dict(tmp_path)[0]
    message = one_line_error(load_backbone_state, build(), state, match="mis-shaped")
    assert "checkpoint [32, 16, 2, 2] vs model [64, 16, 2, 2]" in message


def test_missing_and_unexpected_keys_reported_together():
    state = dict(read_sat_state_dict(DIT_CKPT)[0])
    del state["transformer.final_layernorm.bias"]
    state["transformer.layers.2.mlp.dense_h_to_4h.weight"] = torch.zeros(1)
    message = one_line_error(load_backbone_state, build(), state)
    assert "1 missing (transformer.final_layernorm.bias)" in message
    assert "1 unexpected (transformer.layers.2.mlp.dense_h_to_4h.weight)" in message


def test_truncated_file(tmp_path):
    data = DIT_PT.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    message = one_line_error(safe_torch_load, tmp_path / "cut.pt", match="truncated or corrupt")
    assert "central directory" in message and "miniz" not in message
    one_line_error(read_sat_state_dict, tmp_path / "cut.pt", match="truncated or corrupt")


def test_truncated_legacy_file(tmp_path):
    state = {"module": {"mixins.x": torch.zeros(1000)}}
    torch.save(state, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    data = (tmp_path / "old.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    one_line_error(safe_torch_load, tmp_path / "cut.pt", match="truncated or corrupt")


def test_folder_without_latest(tmp_path):
    (tmp_path / "stuff.txt").write_text("x")
    message = one_line_error(resolve_sat_checkpoint, tmp_path, match="not a SAT checkpoint folder")
    assert "latest" in message and "mp_rank_00_model_states.pt" in message and "stuff.txt" in message


def test_folder_hints_at_nested_checkpoint(tmp_path):
    shutil.copytree(DIT_CKPT, tmp_path / "transformer")
    one_line_error(resolve_sat_checkpoint, tmp_path, match="did you mean")


def test_latest_pointing_at_missing_iteration(tmp_path):
    shutil.copytree(DIT_CKPT, tmp_path / "ck")
    (tmp_path / "ck" / "latest").write_text("2000")
    one_line_error(resolve_sat_checkpoint, tmp_path / "ck", match="names iteration 2000")


@pytest.mark.parametrize("content", ["0", "abc", ""])
def test_latest_with_bad_content(tmp_path, content):
    (tmp_path / "latest").write_text(content)
    one_line_error(resolve_sat_checkpoint, tmp_path, match="iteration number > 0 or 'release'")


def test_missing_path(tmp_path):
    one_line_error(resolve_sat_checkpoint, tmp_path / "nope", match="does not exist")
    one_line_error(safe_torch_load, tmp_path / "nope.pt", match="does not exist")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > marker",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch, zip_format):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"module": {}, "payload": _RunsCode()}, path, _use_new_zipfile_serialization=zip_format)
    message = one_line_error(safe_torch_load, path, match="it would run code")
    assert "system" in message
    one_line_error(read_sat_state_dict, path, match="it would run code")
    assert not (tmp_path / "marker").exists()


def test_not_a_torch_file(tmp_path):
    (tmp_path / "notes.pt").write_text("hello, I am text\n")
    one_line_error(safe_torch_load, tmp_path / "notes.pt", match="not a torch checkpoint")
    one_line_error(safe_torch_load, FIXTURE / "dit_forward.safetensors", match="safetensors")
    (tmp_path / "empty.pt").write_bytes(b"")
    one_line_error(safe_torch_load, tmp_path / "empty.pt", match="empty")
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.pt", "w") as z:
        z.writestr("a.txt", "x")
    one_line_error(safe_torch_load, tmp_path / "other.pt", match="not a torch checkpoint")


# --- (6) a SAT training checkpoint's extra entries


def sat_training_checkpoint() -> dict:
    return {
        "module": {"model.diffusion_model.mixins.x": torch.zeros(2)},
        "iteration": 500,
        "np_rng_state": np.random.get_state(),
        "random_rng_state": random.getstate(),
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.zeros(16, dtype=torch.uint8),
        "client_lr_scheduler": {"num_iters": 500, "decay_style": "linear", "np_lr": np.float64(1e-5)},
        "buffer_names": [],
        "param_shapes": [OrderedDict([("model.diffusion_model.mixins.x", torch.Size([2]))])],
        "frozen_param_shapes": None,
        "optimizer": None,
        "lr_scheduler": None,
        "global_steps": 500,
        "global_samples": 1000,
        "skipped_steps": 0,
        "dp_world_size": 1,
        "mp_world_size": 1,
        "ds_config": {"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}, "gradient_clipping": 0.1},
        "ds_version": "0.15.1",
        "dtype": torch.bfloat16,
        "int_array": np.arange(5, dtype=np.int64),
    }


@pytest.mark.parametrize("zip_format", [True, False])
def test_sat_training_checkpoint_loads(tmp_path, zip_format):
    original = sat_training_checkpoint()
    torch.save(original, tmp_path / "train.pt", _use_new_zipfile_serialization=zip_format)
    loaded = safe_torch_load(tmp_path / "train.pt")
    name, keys, pos, has_gauss, cached = loaded["np_rng_state"]
    assert name == "MT19937" and keys.dtype == np.uint32
    np.testing.assert_array_equal(keys, original["np_rng_state"][1])
    assert (pos, has_gauss, cached) == original["np_rng_state"][2:]
    np.random.set_state(loaded["np_rng_state"])
    assert loaded["random_rng_state"] == original["random_rng_state"]
    assert torch.equal(loaded["torch_rng_state"], original["torch_rng_state"])
    assert loaded["ds_config"] == original["ds_config"] and loaded["dtype"] is torch.bfloat16
    assert loaded["client_lr_scheduler"]["np_lr"] == 1e-5
    state, aside = read_sat_state_dict(tmp_path / "train.pt")
    assert list(state) == ["mixins.x"] and aside["iteration"] == 500 and "np_rng_state" in aside


def test_numpy_1x_names_load(tmp_path):
    """numpy 1.x pickles say numpy.core.multiarray; the legacy torch format lets the test rewrite the name."""
    state = {"np_rng_state": np.random.get_state()}
    torch.save(state, tmp_path / "new.pt", _use_new_zipfile_serialization=False)
    data = (tmp_path / "new.pt").read_bytes()
    assert b"numpy._core.multiarray\n" in data
    (tmp_path / "old.pt").write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    loaded = safe_torch_load(tmp_path / "old.pt")
    np.testing.assert_array_equal(loaded["np_rng_state"][1], np.random.get_state()[1])


def test_object_arrays_are_refused(tmp_path):
    torch.save({"a": np.array([1, "x"], dtype=object)}, tmp_path / "obj.pt")
    one_line_error(safe_torch_load, tmp_path / "obj.pt", match="numpy.dtypes.ObjectDType")


# --- (7) memory-mapped loading of zip checkpoints


def test_zip_checkpoints_are_memory_mapped(tmp_path, monkeypatch):
    big = torch.randn(4096, 2048)  # 32 MiB
    torch.save({"module": {"model.diffusion_model.mixins.big": big}}, tmp_path / "big.pt")
    torch.save({"module": {}}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mmap"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "load", spy)
    state, _ = read_sat_state_dict(tmp_path / "big.pt")
    assert torch.equal(state["mixins.big"], big)
    safe_torch_load(tmp_path / "legacy.pt")
    assert calls == [True, False]
