"""Fuzzing the T5 folder reader (`model.text_encoder.path`): config.json, spiece.model and model.safetensors.

The starting point is the shipped shapes T5 (cogvid/weights/shapes/t5). One file of it is damaged per example: cut
short or byte-edited, or config.json parsed and given a value of another kind. `T5Conditioner.from_pretrained` (the
width the shapes DiT takes given, as a sample run loads it) then either loads and encodes a prompt, or stops with one
CogvidError line. Few examples: each one loads transformers' T5.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path

from fuzz_helpers import VALUES, fuzz_settings, mutated, read_or_refused
from hypothesis import given
from hypothesis import strategies as st

from cogvid.models.t5 import T5Conditioner

TORCH_THREADS = 1
SHAPES_T5 = Path(__file__).resolve().parents[1] / "cogvid" / "weights" / "shapes" / "t5"
WIDTH = 64  # the shapes DiT's text_hidden_size
FILES = ["config.json", "spiece.model", "model.safetensors"]


def _load_damaged(name: str, data: bytes) -> str | None:
    """Load a copy of the shapes T5 in which `name` holds `data`; the error line, or None when it loaded."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "t5"
        shutil.copytree(SHAPES_T5, folder)
        (folder / name).write_bytes(data)

        def load_and_encode():
            T5Conditioner.from_pretrained(str(folder), max_length=8, text_hidden_size=WIDTH).encode(["a red circle"])

        return read_or_refused(load_and_encode)


def _focus(name: str) -> tuple[int, int] | None:
    """Where the reader looks first: a safetensors header, the start of the sentencepiece proto, or anywhere."""
    if name == "model.safetensors":
        with open(SHAPES_T5 / name, "rb") as f:
            return 0, 8 + struct.unpack("<Q", f.read(8))[0] + 16
    return (0, 2000) if name == "spiece.model" else None


def test_the_shipped_folder_loads():
    assert _load_damaged("config.json", (SHAPES_T5 / "config.json").read_bytes()) is None


@fuzz_settings(12)
@given(name=st.sampled_from(FILES), data=st.data())
def test_cut_and_byte_edited_files(name, data):
    _load_damaged(name, data.draw(mutated((SHAPES_T5 / name).read_bytes(), _focus(name))))


@fuzz_settings(8)
@given(key=st.sampled_from(["d_model", "vocab_size", "num_layers", "num_heads", "d_ff", "model_type"]), value=VALUES)
def test_config_values_of_another_kind(key, value):
    config = json.loads((SHAPES_T5 / "config.json").read_text())
    _load_damaged("config.json", json.dumps({**config, key: value}).encode())
