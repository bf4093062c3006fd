"""Fuzzing the SAT model YAML import (`cogvid-export task=sat_config`): damaged YAMLs end in one CogvidError line.

Inputs start from real files: the SAT fixture's tiny_2b(_lora).yaml and the five released variants' YAMLs that
conftest.sat_variant_doc writes. Text is cut and byte-edited; documents get a value swapped for one of another kind,
a key dropped or an unknown key added. Explicit cases: Python tags never run code (yaml.safe_load), deep nesting and
alias bombs are refused quickly.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import FIXTURE, SAT_VARIANTS, sat_variant_doc
from fuzz_helpers import VALUES, fuzz_settings, mutated, one_line, read_or_refused
from hypothesis import given
from hypothesis import strategies as st

from cogvid.sat.yaml_import import export_sat_config, import_sat_config
from cogvid.utils.errors import CogvidError

SOURCES = {
    "tiny_2b": (FIXTURE / "tiny_2b.yaml").read_bytes(),
    "tiny_2b_lora": (FIXTURE / "tiny_2b_lora.yaml").read_bytes(),
    **{v: yaml.safe_dump(sat_variant_doc(v), sort_keys=False).encode() for v in SAT_VARIANTS},
}


def _import_bytes(data: bytes, export: bool = False) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sat.yaml"
        path.write_bytes(data)
        if export:  # the whole command: read, map, check against the schemas, write both configs
            return read_or_refused(lambda: export_sat_config(path, "fuzzed", Path(tmp) / "out"))
        return read_or_refused(lambda: import_sat_config(path, "fuzzed"))


def test_the_starting_yamls_import():
    for data in SOURCES.values():
        assert _import_bytes(data, export=True) is None


@fuzz_settings(150)
@given(data=st.sampled_from(sorted(SOURCES)).flatmap(lambda name: mutated(SOURCES[name])))
def test_cut_and_byte_edited_yaml(data):
    _import_bytes(data)


def _places(node, path=()):
    """Every (path to a container, key or index) in a loaded YAML document."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield path, key
        yield from _places(child, (*path, key))


@st.composite
def edited_docs(draw):
    doc = yaml.safe_load(SOURCES[draw(st.sampled_from(sorted(SOURCES)))])
    path, key = draw(st.sampled_from(list(_places(doc))))
    parent = doc
    for step in path:
        parent = parent[step]
    edit = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
    if edit == "replace":
        parent[key] = draw(VALUES)
    elif edit == "delete":
        del parent[key]
    elif isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=8) | st.sampled_from(["a\nb", "x" * 200]))] = draw(VALUES)
    else:
        parent.append(draw(VALUES))
    return doc


@fuzz_settings(120)
@given(doc=edited_docs())
def test_values_of_the_wrong_kind(doc):
    _import_bytes(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode(), export=True)


@pytest.mark.parametrize(
    "tagged",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object/apply:subprocess.call [['touch', '{marker}']]",
        "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
        "!!python/object/apply:builtins.exec [\"open('{marker}', 'w')\"]",
        "!!python/name:os.system",
        "!!python/module:os",
        "!<tag:yaml.org,2002:python/object/apply:posix.system> ['touch {marker}']",
    ],
)
def test_python_tags_never_run(tmp_path, tagged):
    marker = tmp_path / "ran"
    doc = SOURCES["tiny_2b"].decode().replace("model:", f"model:\n  scale_factor: {tagged.format(marker=marker)}", 1)
    path = tmp_path / "sat.yaml"
    path.write_text(doc)
    with pytest.raises(CogvidError, match="is not plain YAML") as info:
        import_sat_config(path, "evil")
    one_line(info.value)
    assert not marker.exists()


TINY = SOURCES["tiny_2b"].decode()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),  # RecursionError in PyYAML's composer
        ("model: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "nested too deeply"),
        (TINY.replace("scale_factor: 1.15258426", "scale_factor: 1" + "0" * 400), "too large for a number"),
        (TINY.replace("patch_size: 2", "patch_size: [2, 2, 1" + "0" * 400 + "]"), "patch_size"),
        ("\x00\x01\n", "not plain YAML"),
        (TINY + "---\n" + TINY, "not plain YAML"),
        (TINY + '"a\\nb": 1\n', "unknown SAT key 'a\\\\nb'"),  # a key with a newline, shown escaped
        (TINY + "args:\n  load: [1, 2]\n", "args.load must be a path"),
    ],
)
def test_explicit_bad_yaml(tmp_path, text, expected):
    path = tmp_path / "sat.yaml"
    path.write_text(text)
    with pytest.raises(CogvidError, match=expected) as info:
        import_sat_config(path, "bad")
    one_line(info.value)


def test_huge_integers_where_a_fixed_value_is_expected():
    doc = yaml.safe_load(SOURCES["tiny_2b"])
    doc["model"]["network_config"]["params"]["transformer_args"]["model_parallel_size"] = 10**400
    message = _import_bytes(yaml.safe_dump(doc).encode())  # math.isclose raised OverflowError
    assert message and "model_parallel_size" in message


def test_an_alias_bomb_is_refused_quickly():
    """40 levels of `[*a, *a]` are 2**40 references to one list: messages show a bounded repr of it (a plain repr
    never finished)."""
    bomb = "a0: &a0 [x, x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]\n" for i in range(1, 40))
    tiny = SOURCES["tiny_2b"].decode()
    for doc in (tiny.replace("patch_size: 2", "patch_size: *a39"), tiny + "args:\n  load: *a39\n"):
        started = time.monotonic()
        message = _import_bytes((bomb + doc).encode())
        assert message is not None and time.monotonic() - started < 5, message
