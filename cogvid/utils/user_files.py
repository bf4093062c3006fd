"""Guarded readers of the files cogvid reads from a user's folders: a damaged or wrong file is one `CogvidError` line
that names the file and what is wrong with it, never a decoder's traceback.

* `read_json`: a JSON file with an object (or another given type) at the top (`parse_json` for JSON held inside
  another file); `require_fields` then checks the keys a reader needs and their types.
* `read_yaml`: plain YAML (`yaml.safe_load`: no tags, so no code) with a mapping at the top.
* `read_sentencepiece`: a sentencepiece model (T5's spiece.model).
* `read_safetensors_header`: a safetensors file's header, every tensor checked to lie inside the file.
* `safe_torch_load`: a torch file (zip or legacy pickle) with `weights_only=True`, plus numpy's RNG-state types;
  `read_torch_state` then finds the state dict inside it, every key a name.

Every read of a user's file goes through one of these; torch, numpy and sentencepiece are imported only when a file
of theirs is read, so the config checks that run before torch can import this module.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import pickle
import re
import reprlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cogvid.utils.errors import CogvidError

# ------------------------------------------------------------------------------------------------------------
# JSON and YAML

_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number"}


def _json_kind(value: object) -> str:
    """'a JSON list', 'a JSON str', ...: the Python type's name, as the messages of the readers have always said."""
    return f"a JSON {type(value).__name__}" if value is not None else "JSON null"


def _read_text(path: Path, prefix: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CogvidError(f"{prefix}{path} does not exist") from None
    except IsADirectoryError:
        raise CogvidError(f"{prefix}{path} is a folder, not a file") from None
    except UnicodeDecodeError as ex:
        raise CogvidError(f"{prefix}{path} is damaged: it is not UTF-8 text (byte {ex.start})") from None
    except OSError as ex:
        raise CogvidError(f"{prefix}{path}: cannot read it ({ex.strerror or type(ex).__name__})") from None


def read_json(path: str | os.PathLike, prefix: str = "", top: type = dict, hint: str = "") -> Any:
    """The JSON document of `path`, which must be of type `top` (an object by default). `prefix` starts every
    message, e.g. "data.cache=DIR: " for the setting that named the file; `hint` ends a message about the content
    (what to do about it)."""
    path = Path(path)
    return parse_json(_read_text(path, prefix), f"{prefix}{path}", top, hint)


def parse_json(text: str, name: str, top: type = dict, hint: str = "") -> Any:
    """The JSON document `text` of type `top`; `name` says where the text is from (a file, a metadata entry)."""
    damaged, hint = f"{name} is damaged: it", f"; {hint}" if hint else ""
    if not text.strip():
        raise CogvidError(f"{damaged} is empty{hint}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as ex:
        where = f"line {ex.lineno}, column {ex.colno}"
        if ex.pos >= len(text.rstrip()) or ex.msg.startswith("Unterminated string"):
            raise CogvidError(f"{damaged} is cut off (the JSON ends early; {ex.msg}: {where}){hint}") from None
        raise CogvidError(f"{damaged} is not valid JSON ({ex.msg}: {where}){hint}") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise CogvidError(f"{damaged} is not valid JSON (nested too deeply){hint}") from None
    if not isinstance(data, top):
        raise CogvidError(f"{damaged} holds {_json_kind(data)}, not {_JSON_TYPES.get(top, top.__name__)}{hint}")
    return data


def _has_type(value: object, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # a JSON number: an integer or a finite float
        return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < float("inf")
    return isinstance(value, kind)


def require_fields(data: Mapping, path: str | os.PathLike, fields: Mapping[str, type], what: str) -> None:
    """Each of `fields` (key -> type) is in `data` with its type; else one line: `path` is not `what`. int fields
    must be positive (sizes and counts)."""
    for key, kind in fields.items():
        if key not in data:
            raise CogvidError(f"{path} has no {key!r}: it is not {what}")
        value = data[key]
        if not _has_type(value, kind) or (kind is int and value <= 0):
            shown = reprlib.repr(value)[:40]
            must = "a positive integer" if kind is int else _JSON_TYPES.get(kind, kind.__name__)
            raise CogvidError(f"{path}: {key} is {shown}, not {must}; it is not {what}")


def read_yaml(path: str | os.PathLike, what: str = "YAML file") -> dict:
    """A YAML file loaded with `yaml.safe_load` (no tags, no code), with a mapping at the top. `what` names the file
    in messages ("SAT config")."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CogvidError(f"{what} {p} does not exist") from None
    except IsADirectoryError:
        raise CogvidError(f"{what} {p} is a directory, not a YAML file") from None
    except (OSError, UnicodeDecodeError) as ex:
        raise CogvidError(f"cannot read {what} {p}: {ex}") from None
    try:
        doc = yaml.safe_load(text)
    except RecursionError:  # PyYAML composes nodes recursively: a few thousand nested brackets
        raise CogvidError(f"{what} {p} is not plain YAML: it is nested too deeply") from None
    except yaml.YAMLError as ex:
        problem = getattr(ex, "problem", None) or str(ex).strip().splitlines()[0]
        mark = getattr(ex, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise CogvidError(f"{what} {p} is not plain YAML: {problem}{where}") from None
    if not isinstance(doc, dict):
        raise CogvidError(f"{what} {p} holds {type(doc).__name__}, not a mapping with a top-level 'model:' key")
    return doc


# ------------------------------------------------------------------------------------------------------------
# sentencepiece


def read_sentencepiece(path: str | os.PathLike, prefix: str = ""):
    """A `sentencepiece.SentencePieceProcessor` of the model file `path` (T5's spiece.model)."""
    import sentencepiece as spm

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as ex:
        raise CogvidError(f"{prefix}{path}: cannot read it ({ex.strerror or type(ex).__name__})") from None
    if not data:
        raise CogvidError(f"{prefix}{path} is damaged: it is empty")
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(data)
    except (RuntimeError, OSError, ValueError) as ex:  # sentencepiece: "Internal: ... could not parse ModelProto"
        detail = (str(ex).strip().splitlines() or [type(ex).__name__])[0][:120]
        raise CogvidError(f"{prefix}{path} is damaged: it is not a sentencepiece model ({detail})") from None
    if processor.get_piece_size() == 0:
        raise CogvidError(f"{prefix}{path} is damaged: the sentencepiece model has no pieces")
    return processor


# ------------------------------------------------------------------------------------------------------------
# safetensors

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


@dataclass(frozen=True)
class SafetensorsHeader:
    """A checked safetensors header: name -> (TensorInfo, begin, end) in bytes after `data_start`."""

    entries: dict[str, tuple[Any, int, int]]
    metadata: dict[str, str]
    data_start: int


def _naturals(value: object) -> bool:
    """A JSON list of integers >= 0 (JSON's true/false are not sizes)."""
    return isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value)


def read_safetensors_header(path: str | os.PathLike) -> SafetensorsHeader:
    """The header of a .safetensors file, after checking that every entry names a known dtype and bytes that lie
    inside the file (a cut-off file fails here, before any tensor is read)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CogvidError(f"{path} is not a safetensors file (shorter than its header)")
            (size,) = struct.unpack("<Q", head)
            if size > _MAX_HEADER:
                raise CogvidError(f"{path} is not a safetensors file (header size {size})")
            text = f.read(size)
            if len(text) < size:
                raise CogvidError(f"{path} is truncated (its header of {size} bytes runs past the end)")
            header = json.loads(text)
            file_size = os.fstat(f.fileno()).st_size
    except (OSError, ValueError, RecursionError) as ex:  # RecursionError: JSON nested thousands deep
        raise CogvidError(f"{path} is not a readable safetensors file ({type(ex).__name__}: {ex})") from ex
    if not isinstance(header, dict):
        raise CogvidError(f"{path} is not a safetensors file (its header is a JSON {type(header).__name__})")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CogvidError(f"{path} is corrupt (__metadata__ is not a map of strings)")
    data_start = 8 + size
    entries = {name: _safetensors_entry(path, name, entry, file_size - data_start) for name, entry in header.items()}
    return SafetensorsHeader(entries, metadata, data_start)


def _safetensors_entry(path: Path, name: str, entry: object, data_size: int) -> tuple[Any, int, int]:
    """(info, begin, end) of one header entry, after checking it describes bytes inside the file."""
    from cogvid.utils.lazy_tensors import TensorInfo, nbytes
    from cogvid.utils.runtime import SAFETENSORS_DTYPES

    if not name.isprintable():
        raise CogvidError(f"{path} is corrupt (tensor name {name[:60]!r} has control characters)")
    if not isinstance(entry, dict):
        raise CogvidError(f"{path} is corrupt (tensor {name}: {type(entry).__name__}, not an entry)")
    code = entry.get("dtype")
    dtype = SAFETENSORS_DTYPES.get(code) if isinstance(code, str) else None
    if dtype is None:
        raise CogvidError(f"{path}: tensor {name} has dtype {str(code)[:20]!r}, which cogvid does not read")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not _naturals(shape) or not _naturals(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise CogvidError(
            f"{path} is corrupt (tensor {name}: shape and data_offsets must be non-negative integers, "
            "data_offsets [begin, end] with begin <= end)"
        )
    begin, end = offsets
    info = TensorInfo(tuple(shape), dtype)
    if end - begin != nbytes(info.shape, dtype) or end > data_size:
        raise CogvidError(f"{path} is truncated or corrupt (tensor {name} lies outside the file)")
    return info, begin, end


# ------------------------------------------------------------------------------------------------------------
# torch files (SAT checkpoints, training state)

_ZIP_MAGIC = b"PK\x03\x04"


@functools.cache
def _numpy_safe_globals() -> list[tuple[object, str]]:
    """numpy's reconstructors for arrays, scalars and plain numeric dtypes, under numpy 1.x and 2.x names.

    An `np.random.get_state()` tuple pickles as `_reconstruct(ndarray, ...)` + a `dtype('u4')` built then set
    up by BUILD; the restricted unpickler only BUILDs instances whose type is allowed, so listing just the
    numeric dtype classes keeps object and structured dtypes out.
    """
    import numpy as np

    try:  # numpy >= 2 (numpy 1.x pickles name the same functions numpy.core.multiarray.*)
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray

    allowed: list[tuple[object, str]] = [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed.append((multiarray._reconstruct, f"{module}._reconstruct"))
        allowed.append((multiarray.scalar, f"{module}.scalar"))
    numeric = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
    numeric += (np.float16, np.float32, np.float64, np.longdouble, np.complex64, np.complex128)
    for scalar_type in numeric:
        dtype_class = type(np.dtype(scalar_type))
        allowed.append((dtype_class, f"numpy.dtypes.{dtype_class.__name__}"))
    return allowed


def _first_line(text: str) -> str:
    """The first non-empty line, cut at its first sentence end (torch appends paragraphs of advice)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return re.split(r"(?<=[a-z\d])\. ", lines[0])[0] if lines else ""


def _describe_load_failure(path: Path, ex: BaseException) -> str:
    """One line for a failed `torch.load`: refused code, a truncated/corrupt file, or not a torch file."""
    text = str(ex)
    if isinstance(ex, pickle.UnpicklingError):
        refused = re.search(r"GLOBAL ([\w.]+)", text)
        if refused:
            return (
                f"refusing to load {path}: it would run code (GLOBAL {refused.group(1)}); a safe load allows "
                "only tensors, Python containers and numpy arrays"
            )
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        detail = _first_line(reason.group(1)) if reason else _first_line(text)
        refused_type = re.search(r"<class '([\w.]+)'>", detail)
        if refused_type:
            return (
                f"refusing to load {path}: it holds a {refused_type.group(1)}, which a safe load does not "
                "build (only tensors, Python containers and numeric numpy arrays)"
            )
        if "reduce" in detail:
            return f"refusing to load {path}: it would run code ({detail})"
        return f"{path} is not a torch checkpoint or is corrupt (unpickling failed: {detail})"
    if isinstance(ex, PermissionError):
        return f"cannot read {path}: permission denied"
    cut_off = isinstance(ex, (EOFError, struct.error)) or re.search(r"central directory|truncated|EOF", text)
    if cut_off or (isinstance(ex, OSError) and ex.errno == errno.EINVAL):  # EINVAL: miniz seeks past the end
        detail = _first_line(text) or type(ex).__name__
        return f"{path} is truncated or corrupt ({detail}); copy or save it again"
    if isinstance(ex, RuntimeError) and ("PytorchStreamReader" in text or "inline_container" in text):
        return f"{path} is not a torch checkpoint or is corrupt ({_first_line(text)})"
    return f"{path} is not a readable torch checkpoint ({type(ex).__name__}: {_first_line(text)})"


def safe_torch_load(path: str | os.PathLike) -> dict:
    """`torch.load` on the CPU with `weights_only=True` (+ numpy RNG states), memory-mapped for zip files."""
    import torch

    path = Path(path)
    if not path.exists():
        raise CogvidError(f"checkpoint file {path} does not exist")
    if not path.is_file():
        raise CogvidError(f"{path} is not a file")
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise CogvidError(f"{path} is empty")
    is_zip = head.startswith(_ZIP_MAGIC)
    if not is_zip and head[0] != 0x80:  # torch's legacy format opens with a protocol >= 2 pickle
        hint = " (a safetensors file?)" if head[8:9] == b"{" else ""
        raise CogvidError(f"{path} is not a torch checkpoint{hint}: it is neither a torch zip nor a pickle")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as ex:  # torch reports every kind of bad file with its own exception type
        raise CogvidError(_describe_load_failure(path, ex)) from ex
    if not isinstance(obj, dict):
        raise CogvidError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def _check_names(file, mapping: Mapping, where: str) -> None:
    """Refuse a key that is not a printable string: checkpoint entries and tensors are named, and errors list names."""
    for key in mapping:
        if not isinstance(key, str) or not key.isprintable():
            raise CogvidError(f"{file} is not a SAT checkpoint: {where} has the key {reprlib.repr(key)}, not a name")


def read_torch_state(path: str | os.PathLike, wrappers: tuple[str, ...]) -> tuple[dict, dict, str | None]:
    """A torch checkpoint (`safe_torch_load`) as (its state dict, its other top-level entries, the wrapper's name):
    the mapping under the first of `wrappers` found at its top level, else the top level itself (wrapper None, no
    other entries). Every key of both levels must be a name."""
    ckpt = safe_torch_load(path)
    _check_names(path, ckpt, "its top level")
    wrapper = next((k for k in wrappers if isinstance(ckpt.get(k), Mapping)), None)
    if wrapper is None:
        return dict(ckpt), {}, None
    state = dict(ckpt[wrapper])
    _check_names(path, state, f"its {wrapper!r} entry")
    return state, {k: v for k, v in ckpt.items() if k != wrapper}, wrapper
