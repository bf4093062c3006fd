"""Files and streams that cannot be read as they should: one line naming the input, never a traceback from a
decoder (a manifest or stdin that is not UTF-8, a cut-off cache meta.json, a decompression-bomb image)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TIMEOUT
from PIL import Image

from cogvid.config.compose import compose
from cogvid.inference.prompts import read_interactive
from cogvid.training.data import manifest_clips
from cogvid.training.precompute import CachedLatents, read_cache_meta
from cogvid.utils.errors import CogvidError
from cogvid.utils.media import read_image

TORCH_THREADS = 1


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("clips.csv", b"path,caption\nclip.mp4,un caf\xe9 au lait\n"),  # Latin-1
        ("clips.csv", b"path,caption\n\xff\xfeclip.mp4,a fox\n"),
        ("clips.jsonl", b'{"path": "clip.mp4", "caption": "caf\xe9"}\n'),
    ],
)
def test_a_manifest_that_is_not_utf8(tmp_path, name, data):
    manifest = tmp_path / name
    manifest.write_bytes(data)
    with pytest.raises(CogvidError, match=r"data.manifest=.* is not UTF-8 text \(byte \d+") as info:
        manifest_clips(manifest)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ['{"format": "cogvid-lat', "", "[1, 2]", "\xff"])
def test_a_damaged_cache_meta_json(tmp_path, text):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "meta.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(CogvidError, match=r"data.cache=.*meta.json is (damaged|not a JSON object)") as info:
        read_cache_meta(cache)
    assert "\n" not in str(info.value)
    cfg = compose(["model=shapes", f"data.cache={cache}"], "train")
    with pytest.raises(CogvidError, match="meta.json is (damaged|not a JSON object)"):
        CachedLatents(cfg, image_to_video=False)


def test_an_intact_cache_meta_json_reads_back(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"format": "x", "version": 1}))
    assert read_cache_meta(tmp_path) == {"format": "x", "version": 1}


def test_a_decompression_bomb_image(tmp_path, monkeypatch):
    """Pillow refuses images of more than twice Image.MAX_IMAGE_PIXELS; here the limit is lowered, not the image
    made huge."""
    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(path)
    assert read_image(path).size == (64, 64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4096 > 2 x 1000
    with pytest.raises(CogvidError, match="bomb.png is too large an image to read safely") as info:
        read_image(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("errors", ["strict", "surrogateescape"])  # surrogateescape: Python under a C/POSIX locale
def test_standard_input_that_is_not_utf8(errors):
    stream = io.TextIOWrapper(io.BytesIO(b"a red circle moving right\ncaf\xe9 au lait\n"), "utf-8", errors=errors)
    prompts = []
    # strict decoding fails on the first read (the wrapper decodes ahead); surrogateescape at the bad line itself
    with pytest.raises(CogvidError, match=r"standard input line [12] is not UTF-8 text"):
        prompts.extend(job.prompt for job in read_interactive(stream))
    assert prompts in ([], ["a red circle moving right"])


def test_a_real_cogvid_sample_on_non_utf8_stdin_under_the_c_locale(tmp_path):
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "cogvid-sample"),
            "model=shapes",
            "infer.interactive=true",
            f"infer.output_dir={tmp_path / 'out'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        input=b"caf\xe9 au lait\n",
        capture_output=True,
        env={**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"},
        timeout=TIMEOUT,
    )
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2 and "Traceback" not in stderr, stderr
    assert "standard input line 1 is not UTF-8 text" in stderr
    assert not (tmp_path / "out" / "samples").exists() or not any((tmp_path / "out" / "samples").iterdir())
