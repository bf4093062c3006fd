"""Fuzzing the prompts file reader (`infer.prompts_file`): one prompt per line, `prompt@@image_path` for I2V.

Inputs start from a real prompts file (T2V and I2V lines, a blank line, CRLF ends, a BOM) that is cut and
byte-edited, and from lines built of the pieces that matter to the parser. Every outcome is a list of jobs (each a
non-empty one-line prompt) or one CogvidError line.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from fuzz_helpers import fuzz_settings, mutated, one_line, read_or_refused
from hypothesis import given
from hypothesis import strategies as st

from cogvid.inference.prompts import read_prompts_file
from cogvid.utils.errors import CogvidError

PROMPTS = (
    "\ufeffA panda playing guitar in a bamboo forest\r\n"
    "\r\n"
    "A cat on a windowsill at dusk@@cat.png\n"
    "  a red car  @@ /images/car 1.png\n"
    "Ein Fuchs im Schnee, Nahaufnahme\n"
).encode()

PIECES = st.sampled_from(["@@", "@", " ", "\t", "\n", "\r\n", "\r", "\x00", "\ufeff", "\u2028", "\x85", "\x0b"])
PIECES = PIECES | st.sampled_from(["a cat", "img.png", "../../etc/passwd", "/abs/p.png", "x" * 5000, "é", "🐼"])


def _read(data: bytes) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prompts.txt"
        path.write_bytes(data)
        jobs = []
        message = read_or_refused(lambda: jobs.extend(read_prompts_file(str(path))))
    for index, job in enumerate(jobs):  # control characters are allowed; line breaks never reach a prompt
        assert job.index == index and job.prompt.strip() and len(job.prompt.splitlines()) == 1, job
        assert job.image is None or (job.image.strip() and len(job.image.splitlines()) == 1), job
    return message


def test_the_starting_file_reads(tmp_path):
    jobs = read_prompts_file(str(_write(tmp_path, PROMPTS)))
    assert [j.prompt for j in jobs][:2] == [
        "A panda playing guitar in a bamboo forest",
        "A cat on a windowsill at dusk",
    ]
    assert jobs[2].image == "/images/car 1.png" and len(jobs) == 4


def _write(folder: Path, data: bytes) -> Path:
    path = folder / "prompts.txt"
    path.write_bytes(data)
    return path


@fuzz_settings(150)
@given(data=mutated(PROMPTS))
def test_cut_and_byte_edited_prompts_file(data):
    _read(data)


@fuzz_settings(150)
@given(pieces=st.lists(PIECES | st.text(max_size=6), max_size=12))
def test_lines_built_from_separators_and_odd_characters(pieces):
    _read("".join(pieces).encode("utf-8", errors="surrogatepass"))


@fuzz_settings(60)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes(data):
    _read(data)


@pytest.mark.parametrize(
    "text, expected",
    [
        (b"a cat@@\n", "nothing after '@@'"),
        (b"@@cat.png\n", "the prompt is empty"),
        (b"a cat@@im\x00g.png\n", "holds a NUL character"),
        (b"\n \n\t\n", "holds no prompts"),
        (b"a cat\n\xff\xfe\n", "is not UTF-8 text (byte 0xff on line 2)"),
        (b"a cat\n\xed\xa0\x80\n", "is not UTF-8 text"),  # a UTF-16 surrogate, which UTF-8 forbids
    ],
)
def test_explicit_bad_prompts_files(tmp_path, text, expected):
    with pytest.raises(CogvidError, match=re.escape(expected)) as info:
        read_prompts_file(str(_write(tmp_path, text)))
    one_line(info.value)


def test_an_image_name_too_long_for_the_os_is_kept_as_text(tmp_path):
    """Path.exists raised OSError (ENAMETOOLONG) on a 5000-character image name; the image loader reports it."""
    jobs = read_prompts_file(str(_write(tmp_path, b"a cat@@" + b"x" * 5000 + b".png\n")))
    assert jobs[0].image.endswith("x" * 5000 + ".png")
