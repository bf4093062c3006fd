"""Fuzzing the diffusers folder reader (`cogvid-export task=to_sat`): config.json, model_index.json, *.safetensors and
the shards' index JSON.

The starting point is a real export of the SAT fixture to diffusers (one file per part, and the transformer in
shards). One file of it is damaged per example: bytes of a safetensors header or a JSON file cut and edited, or a
parsed header / config / index given a value of another kind. `import_to_sat` then either writes the SAT checkpoint
or stops with one CogvidError line.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import FIXTURE
from fuzz_helpers import VALUES, fuzz_settings, mutated, one_line, read_or_refused
from hypothesis import given
from hypothesis import strategies as st

import cogvid
from cogvid.config.schema import ExportPart
from cogvid.interop.diffusers_to_sat import import_to_sat
from cogvid.interop.sat_to_diffusers import export_to_diffusers, model_index
from cogvid.utils.errors import CogvidError

TORCH_THREADS = 1
PARTS = {ExportPart.transformer, ExportPart.vae}
WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = "transformer/diffusion_pytorch_model.safetensors.index.json"
SHARD = "transformer/diffusion_pytorch_model-00001-of-00005.safetensors"


@pytest.fixture(scope="module")
def cfg():
    return cogvid.compose(
        ["model=tiny", f"model.ckpt={FIXTURE / 'dit_ckpt'}", f"model.vae_ckpt={FIXTURE / 'vae' / '3d-vae.pt'}"]
    ).model


@pytest.fixture(scope="module")
def exports(cfg, tmp_path_factory) -> dict[str, Path]:
    """{"single": a pipeline folder (transformer + vae, one file each), "sharded": a transformer in 5 shards}."""
    root = tmp_path_factory.mktemp("diffusers")
    export_to_diffusers(cfg, root / "single", PARTS, torch.float32, 10**9)
    (root / "single" / "model_index.json").write_text(json.dumps(model_index(cfg)))
    export_to_diffusers(cfg, root / "sharded", {ExportPart.transformer}, torch.float32, 200_000)
    assert (root / "sharded" / SHARD).is_file()
    return {"single": root / "single", "sharded": root / "sharded"}


def _import_damaged(cfg, original: Path, file: str, data: bytes) -> str | None:
    """Import a hard-linked copy of `original` in which `file` holds `data`."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "source"
        shutil.copytree(original, folder, copy_function=_link)
        (folder / file).unlink()  # never write through the link into the shared original
        (folder / file).write_bytes(data)
        parts = PARTS if (folder / "vae").is_dir() else {ExportPart.transformer}
        return read_or_refused(lambda: import_to_sat(cfg, folder, Path(tmp) / "out", parts, None))


def _link(src, dst):
    Path(dst).hardlink_to(src)


def _header_end(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def test_the_exports_import(cfg, exports):
    for layout, file in (("single", "transformer/config.json"), ("sharded", INDEX)):
        assert _import_damaged(cfg, exports[layout], file, (exports[layout] / file).read_bytes()) is None


# (layout, file, whether to edit only the header): every file the reader parses
FILES = [
    ("single", f"transformer/{WEIGHTS}", True),
    ("single", f"vae/{WEIGHTS}", True),
    ("single", "transformer/config.json", False),
    ("single", "vae/config.json", False),
    ("single", "model_index.json", False),
    ("sharded", INDEX, False),
    ("sharded", SHARD, True),
]


@fuzz_settings(60)
@given(which=st.sampled_from(FILES), data=st.data())
def test_cut_and_byte_edited_files(cfg, exports, which, data):
    layout, file, header_only = which
    original = (exports[layout] / file).read_bytes()
    focus = (0, _header_end(exports[layout] / file) + 16) if header_only else None
    _import_damaged(cfg, exports[layout], file, data.draw(mutated(original, focus)))


def _safetensors(header: object, payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


@st.composite
def edited_json(draw, value):
    """A parsed JSON object with one entry (at depth <= 2) replaced, dropped or the whole replaced."""
    edit = draw(st.sampled_from(["replace", "replace", "drop", "whole"]))
    if edit == "whole" or not isinstance(value, dict) or not value:
        return draw(VALUES)
    key = draw(st.sampled_from(sorted(value)))
    if edit == "drop":
        return {k: v for k, v in value.items() if k != key}
    inner = value[key]
    if isinstance(inner, dict) and inner and draw(st.booleans()):
        return {**value, key: draw(edited_json(inner))}
    return {**value, key: draw(VALUES | NASTY)}


NASTY = st.sampled_from([[0, 2**64], [-4, 0], [8, 4], [0, 2**63 - 1], [-1], [2**62, 2**62], "BF16", "I64", "F64"])


@fuzz_settings(60)
@given(which=st.sampled_from(FILES), data=st.data())
def test_parsed_files_with_values_of_another_kind(cfg, exports, which, data):
    layout, file, is_weights = which
    path = exports[layout] / file
    raw = path.read_bytes()
    if is_weights:
        end = _header_end(path)
        header = data.draw(edited_json(json.loads(raw[8:end])))
        damaged = _safetensors(header, raw[end:])
    else:
        damaged = json.dumps(data.draw(edited_json(json.loads(raw)))).encode()
    _import_damaged(cfg, exports[layout], file, damaged)


def _weights(exports) -> tuple[dict, bytes]:
    raw = (exports["single"] / "transformer" / WEIGHTS).read_bytes()
    end = 8 + struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:end]), raw[end:]


def _first_entry(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


HEADER_CASES = {
    "header size 2**63": (lambda h, p: struct.pack("<Q", 2**63) + b"{}", "header size"),
    "header size past the end": (lambda h, p: struct.pack("<Q", 10**6) + b"{}", "runs past the end"),
    "shorter than 8 bytes": (lambda h, p: b"\x10\x00", "shorter than its header"),
    "bad JSON": (lambda h, p: _safetensors({}, b"")[:8] + b'{"a": [1,', "not a readable safetensors"),
    "nested 100000 deep": (lambda h, p: struct.pack("<Q", 200000) + b"[" * 100000 + b"]" * 100000, "RecursionError"),
    "header is a list": (lambda h, p: _safetensors([1, 2], p), "header is a JSON list"),
    "entry is a number": (lambda h, p: _safetensors({**h, _first_entry(h): 5}, p), "not an entry"),
    "end past the file": (lambda h, p: _safetensors(_set(h, data_offsets=[0, 2**40]), p), "lies outside"),
    "huge shape": (lambda h, p: _safetensors(_set(h, shape=[2**40, 2**40], data_offsets=[0, 2**82]), p), "outside"),
    "negative length": (lambda h, p: _safetensors(_set(h, data_offsets=[64, 0]), p), "begin <= end"),
    "negative offset": (lambda h, p: _safetensors(_set(h, data_offsets=[-64, 0]), p), "non-negative integers"),
    "float offsets": (lambda h, p: _safetensors(_set(h, data_offsets=[0.0, 4.0]), p), "non-negative integers"),
    "negative shape": (lambda h, p: _safetensors(_set(h, shape=[-1, -4]), p), "non-negative integers"),
    "three offsets": (lambda h, p: _safetensors(_set(h, data_offsets=[0, 4, 8]), p), "shape and data_offsets"),
    "unknown dtype": (lambda h, p: _safetensors(_set(h, dtype="Q7"), p), "does not read"),
    "dtype a list": (lambda h, p: _safetensors(_set(h, dtype=["F32"]), p), "does not read"),
    "no data_offsets": (lambda h, p: _safetensors(_set(h, data_offsets=None), p), "shape and data_offsets"),
    "name with a newline": (lambda h, p: _safetensors({"a\nb": h[_first_entry(h)]}, p), "control characters"),
    "metadata a list": (lambda h, p: _safetensors({**h, "__metadata__": [1]}, p), "__metadata__"),
    "data cut off": (lambda h, p: _safetensors(h, p[: len(p) // 2]), "outside the file"),
}


def _set(header: dict, **fields) -> dict:
    name = _first_entry(header)
    return {**header, name: {**header[name], **fields}}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_explicit_bad_safetensors(cfg, exports, case):
    build, expected = HEADER_CASES[case]
    message = _import_damaged(cfg, exports["single"], f"transformer/{WEIGHTS}", build(*_weights(exports)))
    assert message is not None and expected in message and WEIGHTS in message, message


@pytest.mark.parametrize(
    "index, expected",
    [
        ({"weight_map": {"a": "../../../../etc/passwd"}}, "is not a file name in"),
        ({"weight_map": {"a": "/etc/passwd"}}, "is not a file name in"),
        ({"weight_map": {"a": ".."}}, "is not a file name in"),
        ({"weight_map": {"a": 5}}, "names a shard 5"),
        ({"weight_map": {"a": ["x"]}}, "names a shard ['x']"),
        ({"weight_map": ["x"]}, "weight_map is not a non-empty object"),
        ({"weight_map": {}}, "weight_map is not a non-empty object"),
        ({"metadata": {}}, "no weight_map"),
        ([1], "no weight_map"),
        ({"weight_map": {"a": "gone.safetensors"}}, "names shards that are missing: gone.safetensors"),
    ],
)
def test_explicit_bad_index(cfg, exports, index, expected):
    message = _import_damaged(cfg, exports["sharded"], INDEX, json.dumps(index).encode())
    assert message is not None and expected in message and "index.json" in message, message


@pytest.mark.parametrize(
    "file, config, expected",
    [
        ("transformer/config.json", [1, 2], "holds a JSON list, not an object"),
        ("transformer/config.json", "config", "holds a JSON str, not an object"),
        ("vae/config.json", 3, "holds a JSON int, not an object"),
        ("transformer/config.json", {"num_layers": "2\n3"}, "num_layers='2\\n3'"),
        ("transformer/config.json", {"_class_name": ["x"]}, "is a ['x'], not a CogVideoXTransformer3DModel"),
        ("vae/config.json", {"scaling_factor": "big"}, "scaling_factor 'big' is not a number"),
        ("vae/config.json", {"scaling_factor": 10**400}, "is not a number"),
        ("vae/config.json", {"scaling_factor": True}, "is not a number"),
        ("vae/config.json", {"block_out_channels": {"a": 1}}, "VAE of another size"),
    ],
)
def test_explicit_bad_configs(cfg, exports, file, config, expected):
    if isinstance(config, dict):
        config = {**json.loads((exports["single"] / file).read_text()), **config}
    message = _import_damaged(cfg, exports["single"], file, json.dumps(config).encode())
    assert message is not None and expected in message and "config.json" in message, message


def test_deeply_nested_config_json(cfg, exports):
    message = _import_damaged(cfg, exports["single"], "transformer/config.json", b"[" * 100000 + b"]" * 100000)
    assert message is not None and "is not valid JSON" in message


def test_a_source_config_that_is_not_an_object(tmp_path):
    """A folder given as the transformer itself: its config.json is read to tell transformer from VAE."""
    (tmp_path / "config.json").write_text('["CogVideoXTransformer3DModel"]')
    with pytest.raises(CogvidError, match="holds a JSON list") as info:
        import_to_sat(None, tmp_path, tmp_path / "out", PARTS, None)
    one_line(info.value)
    (tmp_path / "config.json").write_text('{"_class_name": "a\\nb"}')
    with pytest.raises(CogvidError, match="without a _class_name name") as info:
        import_to_sat(None, tmp_path, tmp_path / "out", PARTS, None)
    one_line(info.value)
