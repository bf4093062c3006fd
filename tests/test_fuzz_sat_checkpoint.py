"""Fuzzing the SAT checkpoint reader: `DIR/latest`, the torch zip `mp_rank_00_model_states.pt` and its pickle.

Inputs start from the SAT fixture's real checkpoints (tests/fixtures/sat_tiny_2b/dit_ckpt and vae/3d-vae.pt): the
zip's pickle and directory are cut and byte-edited, the pickle alone is edited and zipped again, and checkpoints with
keys and values of every kind are saved by torch. Every outcome is a read checkpoint or one CogvidError line.

The pickle is read by torch's weights-only unpickler with numpy's reconstructors on top: a stream that names any
other callable through GLOBAL, STACK_GLOBAL, INST or OBJ is refused before it is imported or called, which the
explicit cases check with a marker file the call would create and with modules that are not imported yet.
"""

from __future__ import annotations

import io
import struct
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import FIXTURE
from fuzz_helpers import SCALARS, fuzz_settings, mutated, one_line, read_or_refused
from hypothesis import given
from hypothesis import strategies as st

from cogvid.sat.checkpoint import DIT_PREFIX, MODEL_STATES, read_sat_state_dict, read_sat_vae_state_dict
from cogvid.utils.errors import CogvidError

TORCH_THREADS = 1
# torch warns of every pickle protocol but 2 it meets; damaged and hand-made streams have all kinds
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
DIT_PT = FIXTURE / "dit_ckpt" / "1000" / MODEL_STATES
DIT_BYTES = DIT_PT.read_bytes()
with zipfile.ZipFile(DIT_PT) as _zip:
    RECORDS = {info.filename: _zip.read(info) for info in _zip.infolist()}
PICKLE_NAME = next(name for name in RECORDS if name.endswith("/data.pkl"))
PICKLE_END = zipfile.ZipFile(DIT_PT).getinfo(PICKLE_NAME).header_offset + 64 + len(RECORDS[PICKLE_NAME])
VAE_HEAD = (FIXTURE / "vae" / "3d-vae.pt").read_bytes()[:65536]  # the VAE's pickle and first records


def _zipped(pickle_bytes: bytes) -> bytes:
    """The fixture's checkpoint with `pickle_bytes` as its data.pkl (every other record as it is)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, data in RECORDS.items():
            z.writestr(name, pickle_bytes if name == PICKLE_NAME else data)
    return out.getvalue()


def _read_dit(data: bytes, latest: bytes = b"1000") -> str | None:
    """Lay `data` out as SAT does (DIR/latest, DIR/1000/mp_rank_00_model_states.pt) and read the folder."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "transformer"
        (folder / "1000").mkdir(parents=True)
        (folder / "1000" / MODEL_STATES).write_bytes(data)
        (folder / "latest").write_bytes(latest)
        return read_or_refused(lambda: read_sat_state_dict(folder))


def test_the_fixture_reads_and_a_rezipped_pickle_too():
    assert _read_dit(DIT_BYTES) is None
    assert _read_dit(_zipped(RECORDS[PICKLE_NAME])) is None


# The zip's local header + pickle at the start, and its central directory at the end: where edits change the parse
# (edits inside tensor data only change numbers).
@fuzz_settings(150)
@given(data=mutated(DIT_BYTES, (0, PICKLE_END)) | mutated(DIT_BYTES, (len(DIT_BYTES) - 6000, len(DIT_BYTES))))
def test_cut_and_byte_edited_zip(data):
    _read_dit(data)


@fuzz_settings(150)
@given(pickle_bytes=mutated(RECORDS[PICKLE_NAME]))
def test_byte_edited_pickle(pickle_bytes):
    _read_dit(_zipped(pickle_bytes))


@fuzz_settings(60)
@given(data=mutated(VAE_HEAD))
def test_cut_and_byte_edited_vae_checkpoint(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "3d-vae.pt"
        path.write_bytes(data)
        read_or_refused(lambda: read_sat_vae_state_dict(path))


KEYS = st.text(max_size=8) | st.sampled_from(["module", "state_dict", "model", DIT_PREFIX + "time_embed.0.weight"])
KEYS = KEYS | st.sampled_from(["a\nb", "x" * 300]) | st.integers() | st.none()
TENSORS = st.builds(torch.zeros, st.integers(0, 3))
CONTENT = st.recursive(
    SCALARS | TENSORS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)


@fuzz_settings(100)
@given(content=st.dictionaries(KEYS, CONTENT, max_size=4) | CONTENT)
def test_checkpoints_with_keys_and_values_of_every_kind(content):
    """What torch.save writes from any nesting of containers, numbers, strings and tensors."""
    buffer = io.BytesIO()
    torch.save(content, buffer)
    _read_dit(buffer.getvalue())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "3d-vae.pt"
        path.write_bytes(buffer.getvalue())
        read_or_refused(lambda: read_sat_vae_state_dict(path))


@fuzz_settings(80)
@given(latest=st.binary(max_size=40) | st.text(max_size=30).map(str.encode) | mutated(b"1000"))
def test_any_latest_file(latest):
    message = _read_dit(DIT_BYTES, latest)
    if latest.strip() not in (b"1000", b"01000", b"001000"):
        assert message is not None  # only an iteration that exists reads


@pytest.mark.parametrize(
    "latest, expected",
    [
        (b"../../etc", "holds '../../etc'"),
        (b"1000/../../../etc/passwd", "expected an iteration number"),
        (b"/etc", "expected an iteration number"),
        (b"7", "names iteration 7 but"),
        (b"0", "expected an iteration number > 0"),
        (b"-5", "expected an iteration number"),
        (b"9" * 5000, "expected an iteration number"),  # int() refused the 5000 digits with ValueError
        (b"\x00\xff\xfe junk", "expected an iteration number"),
        (b"release", "names iteration release but"),
        (b"", "expected an iteration number"),
    ],
)
def test_explicit_latest_files(latest, expected):
    message = _read_dit(DIT_BYTES, latest)
    assert message is not None and expected in message and "latest" in message


def test_a_huge_latest_file_is_not_read_whole(tmp_path):
    folder = tmp_path / "transformer"
    folder.mkdir()
    with open(folder / "latest", "wb") as f:
        f.truncate(2**40)  # sparse: 1 TiB of zero bytes
    with pytest.raises(CogvidError, match="expected an iteration number") as info:
        read_sat_state_dict(folder)
    one_line(info.value)


def _text(value: str) -> bytes:
    """Pickle's BINUNICODE: a str pushed on the stack."""
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _calls(module: str, name: str, argument: str) -> dict[str, bytes]:
    """Streams that would call module.name(argument), one per way a pickle can reach a callable."""
    arg = _text(argument)
    return {
        "GLOBAL+REDUCE": b"\x80\x02c" + f"{module}\n{name}\n".encode() + arg + b"\x85R.",
        "STACK_GLOBAL+REDUCE": b"\x80\x04" + _text(module) + _text(name) + b"\x93" + arg + b"\x85R.",
        "INST": b"(" + arg + b"i" + f"{module}\n{name}\n".encode() + b".",
        "OBJ": b"(c" + f"{module}\n{name}\n".encode() + arg + b"o.",
        "GLOBAL+NEWOBJ": b"\x80\x02c" + f"{module}\n{name}\n".encode() + arg + b"\x85}\x81.",
    }


ATTACKS = [
    ("os", "system", "touch {marker}"),
    ("posix", "system", "touch {marker}"),
    ("builtins", "exec", "open({marker!r}, 'w').close()"),
    ("builtins", "eval", "open({marker!r}, 'w').close()"),
    ("subprocess", "getoutput", "touch {marker}"),
    ("pathlib", "Path.touch", "{marker}"),
]


@pytest.mark.parametrize("module, name, command", ATTACKS, ids=[f"{m}.{n}" for m, n, _ in ATTACKS])
def test_pickles_that_call_code_are_refused_and_do_not_run(tmp_path, module, name, command):
    marker = tmp_path / "ran"
    argument = command.format(marker=str(marker))
    for how, stream in _calls(module, name, argument).items():
        # Wrapped as SAT writes it: {"module": <call>}, inside the fixture's zip and as a legacy raw pickle.
        wrapped = stream[:2] + b"}" + _text("module") + stream[2:-1] + b"s." if stream[:1] == b"\x80" else stream
        for data in (_zipped(stream), _zipped(wrapped), stream, wrapped):
            message = _read_dit(data)
            assert message is not None, how
            assert not marker.exists(), f"{how} ran {module}.{name}"


NOT_IMPORTED = ["this", "antigravity", "turtle", "smtplib", "ftplib", "imaplib", "xmlrpc.server", "webbrowser"]


@fuzz_settings(60)
@given(
    module=st.sampled_from([m for m in NOT_IMPORTED if m not in sys.modules]),
    name=st.sampled_from(["x", "main", "open", "__init__"]) | st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
    how=st.sampled_from(["GLOBAL+REDUCE", "STACK_GLOBAL+REDUCE", "INST", "OBJ", "GLOBAL+NEWOBJ"]),
)
def test_a_global_outside_the_allow_list_is_never_imported(module, name, how):
    stream = _calls(module, name, "argument")[how]
    for data in (_zipped(stream), stream):
        assert _read_dit(data) is not None
    assert module not in sys.modules, f"{how} imported {module}"


def test_a_state_dict_with_a_code_call_inside_is_refused(tmp_path):
    """The fixture's own pickle with its first GLOBAL (collections.OrderedDict) pointed at posix.system."""
    marker = tmp_path / "ran"
    call = b"cposix\nsystem\nq\x02" + _text(f"touch {marker}") + b"\x85R"
    evil = RECORDS[PICKLE_NAME].replace(b"ccollections\nOrderedDict\nq\x02)R", call, 1)
    assert evil != RECORDS[PICKLE_NAME]
    message = _read_dit(_zipped(evil))
    assert message is not None and "posix.system" in message and not marker.exists()
