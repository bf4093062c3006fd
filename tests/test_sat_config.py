"""`cogvid-export sat-config`: SAT model YAMLs import as cogvid configs equal to the packaged variants.

The real-variant YAMLs come from conftest's `sat_configs` fixture, which writes them in SAT's schema from the values
of the released configs; fixtures/sat_tiny_2b/ holds the YAMLs the SAT reference outputs were produced with.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TIMEOUT

from cogvid import CogvidError, compose
from cogvid.config.schema import Dtype, Generation, Guider, ModelConfig, PosEmbed, SamplerConfig, Solver
from cogvid.sat.yaml_import import (
    convert_sat_config,
    export_sat_config,
    import_sat_config,
    read_sat_yaml,
    render_config,
)

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "sat_tiny_2b" / "tiny_2b.yaml"
TINY_LORA = FIXTURES / "sat_tiny_2b" / "tiny_2b_lora.yaml"
EXPORT = [sys.executable, "-m", "cogvid.cli.export"]

MODEL_FIELDS = [f.name for f in dataclasses.fields(ModelConfig)]
SAMPLER_FIELDS = [f.name for f in dataclasses.fields(SamplerConfig)]


def _export_and_compose(sat_yaml: Path, name: str, out_dir: Path, dtype: str | None = None):
    export_sat_config(sat_yaml, name, out_dir, dtype=dtype)
    return compose([f"model={name}", f"sampler={name}"], config_dirs=[out_dir])


def _assert_same(got, ref, fields, skip=()):
    for key in fields:
        if key not in skip:
            assert got[key] == ref[key], f"{key}: imported {got[key]!r}, packaged {ref[key]!r}"


def _tiny_doc() -> dict:
    return yaml.safe_load(TINY.read_text())


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(EXPORT + [str(a) for a in args], capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


# ------------------------------------------------------------------------------------------------------------
# Imports equal the packaged configs


def test_tiny_fixture_imports_as_model_tiny(tmp_path):
    got = _export_and_compose(TINY, "tiny_sat", tmp_path, dtype="fp32")  # fp32 is the tiny test dtype
    ref = compose(["model=tiny"])
    assert got.model.name == "tiny_sat"
    _assert_same(got.model, ref.model, MODEL_FIELDS, skip=("name",))
    _assert_same(got.sampler, ref.sampler, SAMPLER_FIELDS)


def test_tiny_lora_fixture_imports_with_rank_and_alpha(tmp_path):
    got = _export_and_compose(TINY_LORA, "tiny_lora_sat", tmp_path, dtype="fp32")
    ref = compose(["model=tiny"])
    assert got.model.lora_rank == 4
    assert got.model.lora_alpha == 1.0  # SAT LoraMixin's default
    _assert_same(got.model, ref.model, MODEL_FIELDS, skip=("name", "lora_rank", "lora_alpha"))


@pytest.mark.parametrize(
    "sat_file, variant",
    [
        ("cogvideox_2b.yaml", "2b"),
        ("cogvideox_5b.yaml", "5b"),
        ("cogvideox_5b_i2v.yaml", "5b_i2v"),
        ("cogvideox1.5_5b.yaml", "1.5_5b"),
        ("cogvideox1.5_5b_i2v.yaml", "1.5_5b_i2v"),
    ],
)
def test_real_variants_import_as_packaged(tmp_path, sat_configs, sat_file, variant):
    got = _export_and_compose(sat_configs / sat_file, f"sat_{variant}", tmp_path)
    ref = compose([f"model={variant}"])
    _assert_same(got.model, ref.model, MODEL_FIELDS, skip=("name", "ckpt"))
    _assert_same(got.sampler, ref.sampler, SAMPLER_FIELDS)


def test_dtype_comes_from_option_then_args_then_bf16(sat_configs):
    assert import_sat_config(sat_configs / "cogvideox_2b.yaml", "a").model["dtype"] is Dtype.fp16  # args.fp16
    assert import_sat_config(sat_configs / "cogvideox_2b.yaml", "a", dtype="fp32").model["dtype"] is Dtype.fp32
    assert import_sat_config(sat_configs / "cogvideox_5b.yaml", "a").model["dtype"] is Dtype.bf16  # no args
    doc = _tiny_doc()
    doc["args"] = {"fp16": False}  # SAT without --fp16/--bf16 runs fp32
    assert convert_sat_config(doc, "a").model["dtype"] is Dtype.fp32


def test_written_files_are_complete_and_say_where_they_came_from(tmp_path, sat_configs):
    model_path, sampler_path = export_sat_config(sat_configs / "cogvideox_2b.yaml", "mine", tmp_path)
    assert (model_path, sampler_path) == (
        tmp_path / "model" / "mine.yaml",
        tmp_path / "sampler" / "mine.yaml",
    )
    text = model_path.read_text()
    assert text.startswith("# ") and "cogvideox_2b.yaml" in text.splitlines()[1]
    assert "CogVideoX-2b-sat/transformer" in text  # args.load is passed on as a note
    written = yaml.safe_load(text)
    assert list(written) == MODEL_FIELDS  # every field explicit, in schema order, no `defaults:`
    assert list(yaml.safe_load(sampler_path.read_text())) == SAMPLER_FIELDS


def test_rewrite_replaces_atomically(tmp_path):
    export_sat_config(TINY, "again", tmp_path, dtype="fp32")
    export_sat_config(TINY, "again", tmp_path, dtype="bf16")
    assert yaml.safe_load((tmp_path / "model" / "again.yaml").read_text())["dtype"] == "bf16"
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["model/again.yaml", "sampler/again.yaml"]  # no temporary files left behind


# ------------------------------------------------------------------------------------------------------------
# Mapping details


def _convert(doc: dict, name: str = "t"):
    return convert_sat_config(doc, name)


def _net(doc: dict) -> dict:
    return doc["model"]["network_config"]["params"]


def test_patch_size_list_selects_the_1_5_generation():
    doc = _tiny_doc()
    _net(doc)["patch_size"] = [2, 2, 2]
    model = _convert(doc).model
    assert (model["generation"], model["patch_size"], model["patch_size_t"]) == (Generation.v1_5, 2, 2)
    _net(doc)["patch_size"] = 2
    model = _convert(doc).model
    assert (model["generation"], model["patch_size"], model["patch_size_t"]) == (Generation.v1_0, 2, 1)


def test_rope_mixin_maps_to_rope():
    doc = _tiny_doc()
    _net(doc)["modules"]["pos_embed_config"] = {
        "target": "dit_video_concat.Rotary3DPositionEmbeddingMixin",
        "params": {"hidden_size_head": 32, "text_length": 8, "learnable_pos_embed": True, "theta": 500},
    }
    model = _convert(doc).model
    assert model["pos_embed"] is PosEmbed.rope
    assert model["learnable_pos_embed"] is True
    assert model["rope_theta"] == 500.0


@pytest.mark.parametrize(
    "sampler_target, guider, solver, guider_kind, scale",
    [
        (
            "VPODEDPMPP2MSampler",
            {"target": "g.VanillaCFG", "params": {"scale": 3}},
            Solver.dpmpp2m_ode,
            "constant",
            3,
        ),
        ("VideoDDIMSampler", None, Solver.ddim, "none", 6.0),
        ("VPSDEDPMPP2MSampler", {"target": "g.IdentityGuider"}, Solver.dpmpp2m_sde, "none", 6.0),
    ],
)
def test_solvers_and_guiders(sampler_target, guider, solver, guider_kind, scale):
    doc = _tiny_doc()
    sampler = doc["model"]["sampler_config"]
    sampler["target"] = f"sgm.modules.diffusionmodules.sampling.{sampler_target}"
    if guider is None:
        del sampler["params"]["guider_config"]
    else:
        sampler["params"]["guider_config"] = guider
    out = _convert(doc).sampler
    assert out["solver"] is solver
    assert out["guider"] is Guider(guider_kind)
    assert out["guidance_scale"] == scale


def _set(path: str, value):
    """A mutation of the tiny YAML: set the value at a dotted path (`[i]` indexes a list)."""

    def apply(doc):
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            name, _, index = key.partition("[")
            node = node[name] if not index else node[name][int(index[:-1])]
        node[last] = value

    return apply


def _delete(path: str):
    def apply(doc):
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        del node[last]

    return apply


NET = "model.network_config.params"
BAD_INPUTS = {
    "unknown sampler": (
        _set("model.sampler_config.target", "sgm.x.EulerEDMSampler"),
        "model.sampler_config.target",
    ),
    "unknown mixin": (
        _set(f"{NET}.modules.lora_config", {"target": "a.PrefixTuningMixin"}),
        "lora_config.target",
    ),
    "unknown embedder": (
        _set("model.conditioner_config.params.emb_models[0].target", "sgm.FrozenCLIPEmbedder"),
        "model.conditioner_config.params.emb_models[0].target",
    ),
    "unknown key": (_set(f"{NET}.use_flash", True), f"{NET}.use_flash"),
    "unknown top-level key": (_set("lightning", {}), "lightning"),
    "harmful knob": (_set(f"{NET}.use_SwiGLU", True), f"{NET}.use_SwiGLU"),
    "offset noise": (_set("model.loss_fn_config.params.offset_noise_level", 0.1), "offset_noise_level"),
    "shift disagrees": (
        _set("model.sampler_config.params.discretization_config.params.shift_scale", 1.0),
        "shift_scale values disagree",
    ),
    "head size": (
        _set(
            f"{NET}.modules.pos_embed_config",
            {
                "target": "d.Rotary3DPositionEmbeddingMixin",
                "params": {"hidden_size_head": 64, "text_length": 8},
            },
        ),
        "hidden_size_head",
    ),
    "t5 length": (_set("model.conditioner_config.params.emb_models[0].params.max_length", 226), "max_length"),
    "num_idx": (_set("model.denoiser_config.params.num_idx", 999), "model.denoiser_config.params.num_idx"),
    "quantize": (_delete("model.denoiser_config.params.quantize_c_noise"), "quantize_c_noise"),
    "in_channels": (_set(f"{NET}.in_channels", 32), "in_channels"),
    "patch_size": (_set(f"{NET}.patch_size", [2, 2, 3]), "patch_size"),
    "ofs on 1.0": (_set(f"{NET}.ofs_embed_dim", 512), "ofs_embed_dim"),
    "not an int": (_set(f"{NET}.num_layers", "two"), f"{NET}.num_layers"),
    "missing network": (_delete("model.network_config"), "model.network_config is missing"),
    "vae latent": (
        _set("model.first_stage_config.params.encoder_config.params.z_channels", 8),
        "encoder_config.params.z_channels",
    ),
    "lora dropout": (
        _set(f"{NET}.modules.lora_config", {"target": "l.LoraMixin", "params": {"r": 4, "lora_dropout": 0.1}}),
        "lora_dropout",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_yaml_is_one_line_naming_the_place(case):
    mutate, where = BAD_INPUTS[case]
    doc = _tiny_doc()
    mutate(doc)
    with pytest.raises(CogvidError) as info:
        _convert(doc)
    message = str(info.value)
    assert where in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "does not exist"),
        ("- model\n- args\n", "not a mapping"),
        ("", "not a mapping"),
        ("model: [unclosed\n", "not plain YAML"),
        ("model: !!python/object/apply:os.getcwd []\n", "not plain YAML"),
    ],
)
def test_unreadable_files_are_refused(tmp_path, content, expected):
    path = tmp_path / "sat.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CogvidError, match=expected) as info:
        read_sat_yaml(path)
    assert "\n" not in str(info.value)
    with pytest.raises(CogvidError, match="is a directory"):
        read_sat_yaml(tmp_path)


def test_names_must_be_plain_and_free(tmp_path):
    with pytest.raises(CogvidError, match="--name"):
        import_sat_config(TINY, "../evil")
    with pytest.raises(CogvidError, match="packaged model/tiny.yaml"):
        export_sat_config(TINY, "tiny", tmp_path)  # the packaged config would win the composition
    assert not (tmp_path / "model").exists()


def test_header_lines_stay_comments():
    imported = import_sat_config(TINY, "t")
    imported.source = "odd\nname: injected"
    text = render_config(imported, "model", "dir")
    assert yaml.safe_load(text)["name"] == "t"


# ------------------------------------------------------------------------------------------------------------
# The command line, and that nothing named in a YAML is ever imported


def test_cli_help_shows_an_example():
    top = _run(["--help"])
    assert top.returncode == 0 and "sat-config" in top.stdout and "example" in top.stdout
    sub = _run(["sat-config", "--help"])
    assert sub.returncode == 0 and "--out-dir" in sub.stdout and "--config-dir" in sub.stdout


def test_cli_writes_configs_and_says_how_to_use_them(tmp_path):
    out = tmp_path / "conf"
    result = _run(["sat-config", TINY, "--name", "tiny_cli", "--out-dir", out, "--dtype", "fp32"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert f"--config-dir {out} model=tiny_cli sampler=tiny_cli" in lines[0]
    cfg = compose(["model=tiny_cli", "sampler=tiny_cli"], config_dirs=[out])
    assert cfg.model.hidden_size == 64 and cfg.model.dtype == "fp32"


def test_cli_unknown_target_is_exit_2_with_one_line(tmp_path):
    doc = _tiny_doc()
    doc["model"]["sampler_config"]["target"] = "sgm.modules.diffusionmodules.sampling.EulerEDMSampler"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = _run(["sat-config", path, "--name", "bad", "--out-dir", tmp_path / "conf"])
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cogvid-export: error: ")
    assert "EulerEDMSampler" in lines[0] and "model.sampler_config.target" in lines[0]
    assert not (tmp_path / "conf").exists()


MARKER_MODULE = """\
from pathlib import Path
Path(__file__).with_name("IMPORTED").write_text("imported")
class DiffusionTransformer: ...
class Sampler: ...
"""


@pytest.fixture
def trap(tmp_path):
    """A module that leaves a marker file when imported, on the subprocess's PYTHONPATH."""
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "sat_marker_trap.py").write_text(MARKER_MODULE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(mod_dir), os.environ.get("PYTHONPATH", "")]))
    return mod_dir, mod_dir / "IMPORTED", env


def test_the_trap_works(trap):
    mod_dir, marker, env = trap
    subprocess.run([sys.executable, "-c", "import sat_marker_trap"], env=env, check=True, timeout=TIMEOUT)
    assert marker.exists()


@pytest.mark.parametrize(
    "place, target, returncode",
    [
        ("network_config", "sat_marker_trap.DiffusionTransformer", 0),  # a known name: accepted, not imported
        ("sampler_config", "sat_marker_trap.Sampler", 2),  # an unknown name: refused, not imported
    ],
)
def test_targets_are_never_imported(tmp_path, trap, place, target, returncode):
    mod_dir, marker, env = trap
    doc = _tiny_doc()
    doc["model"][place]["target"] = target
    path = tmp_path / "trap.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = _run(["sat-config", path, "--name", "trap", "--out-dir", tmp_path / "conf"], env=env, cwd=mod_dir)
    assert result.returncode == returncode, result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_targets_are_never_imported_in_process(trap, monkeypatch):
    mod_dir, marker, _ = trap
    monkeypatch.syspath_prepend(str(mod_dir))
    doc = _tiny_doc()
    doc["model"]["network_config"]["target"] = "sat_marker_trap.DiffusionTransformer"
    _convert(copy.deepcopy(doc))
    doc["model"]["sampler_config"]["target"] = "sat_marker_trap.Sampler"
    with pytest.raises(CogvidError, match="model.sampler_config.target"):
        _convert(doc)
    assert "sat_marker_trap" not in sys.modules
    assert not marker.exists()
