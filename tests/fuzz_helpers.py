"""Shared pieces of the fuzz tests (tests/test_fuzz_*.py) of the readers of users' files.

Each fuzz test starts from a real valid file, damages it (`mutated`), hands it to the reader and accepts exactly two
outcomes (`read_or_refused`): the reader returns, or it raises a `CogvidError` whose message is one non-empty line.
Any other exception fails the test. Runs are derandomized and keep no example database, so CI sees the same inputs
every time and nothing is written into the checkout.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from cogvid.utils.errors import CogvidError

# Hypothesis caches constants and Unicode tables in ./.hypothesis even without a database: keep them out of the repo.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "cogvid-hypothesis")


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def one_line(ex: CogvidError) -> str:
    message = str(ex)
    assert message.strip() and "\n" not in message and "\r" not in message, f"not one line: {message!r}"
    return message


def read_or_refused(read: Callable[[], object]) -> str | None:
    """Run `read`: its one-line CogvidError message, or None when it read the input. Other exceptions propagate."""
    try:
        read()
    except CogvidError as ex:
        return one_line(ex)
    return None


_EDITS = ("truncate", "overwrite", "delete", "insert")


@st.composite
def mutated(draw, data: bytes, focus: tuple[int, int] | None = None) -> bytes:
    """`data` with 1-4 edits: cut short, or a few bytes overwritten, deleted or inserted, at offsets in `focus`."""
    start, stop = focus or (0, len(data))
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(_EDITS))
        at = draw(st.integers(min(start, len(out)), min(stop, len(out))))
        if edit == "truncate":
            return bytes(out[:at])
        if edit == "delete":
            del out[at : at + draw(st.integers(1, 16))]
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            out[at : at + (len(chunk) if edit == "overwrite" else 0)] = chunk
    return bytes(out)


# JSON / YAML values of every kind a damaged file could hold in place of the right one.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([10**400, -(10**400), 2**63, -1])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["", "a\nb", "../../etc/passwd", "F32", "\x00"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
