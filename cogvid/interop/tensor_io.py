"""Tensor files read lazily and written tensor by tensor, so a conversion never holds a whole checkpoint in RAM.

Readers give a `TensorSource`: names, shapes and dtypes up front, the data of one tensor on demand.
* safetensors (diffusers' format): the header is parsed here and each tensor is read with `pread` into its own
  buffer (no mapping of the file, so only the tensor being converted is resident).
* SAT `.pt` (torch zip): `safe_torch_load` maps the file (`mmap=True`); after a tensor is used its pages are handed
  back to the kernel (`madvise(MADV_DONTNEED)` on the private, never-written mapping), so the resident size does not
  grow with every tensor read.

Writers take `TensorTarget`s (name, shape, dtype and a function that builds the tensor) and write one at a time:
* `write_safetensors_shards`: diffusers' `diffusion_pytorch_model[-0000i-of-0000n].safetensors` (+ `.index.json`).
* `write_sat_model_states`: a torch zip file that `torch.load` reads as `{"module": {name: tensor}}`, written with
  torch's own zip writer, one storage record per tensor.
"""

from __future__ import annotations

import collections
import ctypes
import io
import json
import logging
import math
import mmap
import os
import pickle
import re
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cogvid.sat.checkpoint import DIT_PREFIX, MODEL_STATES, SAT_MODEL_CONFIG
from cogvid.utils.errors import CogvidError

log = logging.getLogger(__name__)

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
SAFETENSORS_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


# ------------------------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype


class TensorSource:
    """A read-only mapping name -> tensor whose shapes and dtypes are known before any data is read."""

    def __init__(self, infos: Mapping[str, TensorInfo], load: Callable[[str], torch.Tensor], origin: str):
        self.infos = dict(infos)
        self._load = load
        self.origin = origin

    def __contains__(self, key: str) -> bool:
        return key in self.infos

    def __len__(self) -> int:
        return len(self.infos)

    def keys(self):
        return self.infos.keys()

    def load(self, key: str) -> torch.Tensor:
        """The tensor, in memory of its own (never a view of the file)."""
        return self._load(key)

    def subset(self, keys: Iterable[str]) -> TensorSource:
        keys = list(keys)
        return TensorSource({k: self.infos[k] for k in keys}, self._load, self.origin)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], origin: str = "memory") -> TensorSource:
        tensors = dict(tensors)
        infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in tensors.items()}
        return cls(infos, lambda k: tensors[k], origin)


class _SafetensorsFile:
    """One .safetensors file: its header parsed here, each tensor read with pread."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CogvidError(f"{path} is not a safetensors file (shorter than its header)")
                (size,) = struct.unpack("<Q", head)
                if size > _MAX_HEADER:
                    raise CogvidError(f"{path} is not a safetensors file (header size {size})")
                header = json.loads(f.read(size))
                file_size = os.fstat(f.fileno()).st_size
        except (OSError, ValueError) as ex:
            raise CogvidError(f"{path} is not a readable safetensors file ({type(ex).__name__}: {ex})") from ex
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + size
        self.entries: dict[str, tuple[TensorInfo, int, int]] = {}
        for name, entry in header.items():
            dtype = SAFETENSORS_DTYPES.get(entry.get("dtype"))
            if dtype is None:
                raise CogvidError(f"{path}: tensor {name} has dtype {entry.get('dtype')}, which cogvid does not read")
            begin, end = entry["data_offsets"]
            info = TensorInfo(tuple(entry["shape"]), dtype)
            if end - begin != nbytes(info.shape, dtype) or self.data_start + end > file_size:
                raise CogvidError(f"{path} is truncated or corrupt (tensor {name} lies outside the file)")
            self.entries[name] = (info, begin, end)

    def load(self, name: str) -> torch.Tensor:
        info, begin, end = self.entries[name]
        if end == begin:
            return torch.empty(info.shape, dtype=info.dtype)
        buffer = bytearray(end - begin)
        with open(self.path, "rb") as f:
            got = os.preadv(f.fileno(), [buffer], self.data_start + begin)
        if got != len(buffer):
            raise CogvidError(f"{self.path} is truncated (tensor {name})")
        return torch.frombuffer(buffer, dtype=info.dtype).reshape(info.shape)


def read_safetensors(paths: Path | Iterable[Path]) -> tuple[TensorSource, dict[str, str]]:
    """A source over one or more safetensors files (shards), and the first file's `__metadata__`."""
    paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    files = [_SafetensorsFile(p) for p in paths]
    owner: dict[str, _SafetensorsFile] = {}
    for f in files:
        for name in f.entries:
            if name in owner:
                raise CogvidError(f"tensor {name} is in both {owner[name].path} and {f.path}")
            owner[name] = f
    infos = {name: f.entries[name][0] for name, f in owner.items()}
    origin = str(paths[0].parent if len(paths) > 1 else paths[0])
    return TensorSource(infos, lambda k: owner[k].load(k), origin), (files[0].metadata if files else {})


def find_weight_files(folder: Path, stem: str) -> list[Path]:
    """`stem.safetensors`, or the shards its `stem.safetensors.index.json` names, in `folder`."""
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as ex:
            raise CogvidError(f"{index} is not a safetensors index (no weight_map)") from ex
        shards = [folder / name for name in dict.fromkeys(weight_map.values())]
        absent = [p.name for p in shards if not p.is_file()]
        if absent:
            raise CogvidError(f"{index} names shards that are missing: {', '.join(absent[:3])}")
        return shards
    if single.is_file():
        return [single]
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    others = [n for n in found if n.endswith((".bin", ".pt", ".pth"))]
    hint = f" (found {', '.join(others)}: only safetensors weights are read)" if others else ""
    raise CogvidError(f"{folder} has no {stem}.safetensors (or sharded index){hint}")


_libc = None


def _madvise_dontneed(tensor: torch.Tensor) -> None:
    """Give the pages under a file-mapped tensor back to the kernel (Linux); re-reading faults them in again."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    storage = tensor.untyped_storage()
    start, length = storage.data_ptr(), storage.nbytes()
    page = mmap.PAGESIZE
    first = (start + page - 1) // page * page  # only whole pages inside this tensor's bytes
    last = (start + length) // page * page
    if last > first:
        _libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), 4)  # MADV_DONTNEED


def mapped_source(tensors: Mapping[str, torch.Tensor], origin: str) -> TensorSource:
    """A source over tensors memory-mapped from a torch file: each load copies, then releases the mapped pages."""
    tensors = dict(tensors)
    infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in tensors.items()}

    def load(key: str) -> torch.Tensor:
        mapped = tensors[key]
        out = mapped.clone(memory_format=torch.contiguous_format)
        _madvise_dontneed(mapped)
        return out

    return TensorSource(infos, load, origin)


# ------------------------------------------------------------------------------------------------------------
# Targets and writers


@dataclass(frozen=True)
class TensorTarget:
    """One tensor to write: its name, shape and dtype, and how to build it (called once, just before writing)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    build: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)

    def materialize(self) -> torch.Tensor:
        t = self.build()
        if tuple(t.shape) != tuple(self.shape):  # the key map promised this shape; a mismatch is a bug
            raise AssertionError(f"{self.name}: built {tuple(t.shape)}, planned {self.shape}")
        return t.to(self.dtype).contiguous()


SAT_ITERATION = 1  # the iteration folder of checkpoints cogvid-export writes
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_size(size: str | int) -> int:
    """'5GB' -> 5 * 10**9 (decimal, as huggingface_hub counts), '500MiB' -> 500 * 2**20, 1000 -> 1000 bytes."""
    if isinstance(size, int):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(size), flags=re.IGNORECASE)
        if not match:
            raise CogvidError(f"max_shard_size={size!r}: expected a size such as 5GB, 500MB or 2GiB")
        value = int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").upper()])
    if value <= 0:
        raise CogvidError(f"max_shard_size={size!r} must be positive")
    return value


def plan_shards(targets: list[TensorTarget], max_bytes: int) -> list[list[TensorTarget]]:
    """Consecutive groups of at most max_bytes each (a larger tensor gets a shard of its own)."""
    shards: list[list[TensorTarget]] = [[]]
    size = 0
    for t in targets:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return [s for s in shards if s]


def _write_safetensors_file(path: Path, targets: list[TensorTarget], metadata: dict[str, str], progress) -> None:
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for t in targets:
        header[t.name] = {
            "dtype": SAFETENSORS_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for t in targets:
            tensor = t.materialize()
            if tensor.numel():
                f.write(tensor.reshape(-1).view(torch.uint8).numpy())
            del tensor
            progress.update(1)
        f.flush()
        os.fsync(f.fileno())


def write_safetensors_shards(
    folder: Path,
    stem: str,
    targets: list[TensorTarget],
    max_shard_bytes: int,
    metadata: dict[str, str] | None = None,
    desc: str = "writing",
) -> list[Path]:
    """`stem.safetensors`, or `stem-0000i-of-0000n.safetensors` + `stem.safetensors.index.json` when sharded."""
    metadata = {"format": "pt", **(metadata or {})}
    shards = plan_shards(targets, max_shard_bytes)
    folder.mkdir(parents=True, exist_ok=True)
    names = (
        [f"{stem}.safetensors"]
        if len(shards) <= 1
        else [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    with tqdm(total=len(targets), desc=desc, unit="tensor", leave=False, disable=None) as progress:
        if not shards:
            _write_safetensors_file(folder / names[0], [], metadata, progress)
        for name, shard in zip(names, shards, strict=False):
            _write_safetensors_file(folder / name, shard, metadata, progress)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in targets)},
            "weight_map": {t.name: name for name, shard in zip(names, shards, strict=True) for t in shard},
        }
        (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [folder / n for n in names]


class _StorageRef:
    """Stands for a tensor's storage in the pickle; torch.load resolves it to the record `data/<key>`."""

    def __init__(self, key: str, dtype: torch.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _TensorRef:
    """Pickles as torch's own `_rebuild_tensor_v2(storage, 0, shape, contiguous stride, False, {})`."""

    def __init__(self, storage: _StorageRef, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape

    def __reduce_ex__(self, protocol):
        stride, step = [], 1
        for size in reversed(self.shape):
            stride.append(step)
            step *= size
        args = (self.storage, 0, tuple(self.shape), tuple(reversed(stride)), False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


def _storage_type(dtype: torch.dtype):
    name = {
        torch.float32: "FloatStorage",
        torch.float16: "HalfStorage",
        torch.bfloat16: "BFloat16Storage",
        torch.float64: "DoubleStorage",
        torch.int64: "LongStorage",
        torch.int32: "IntStorage",
        torch.uint8: "ByteStorage",
        torch.bool: "BoolStorage",
    }[dtype]
    return getattr(torch, name)


def _alone_on_storage(t: torch.Tensor) -> torch.Tensor:
    """`t` itself when its storage holds exactly its bytes, else a copy (a chunk of a fused tensor is a view)."""
    if t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone(memory_format=torch.contiguous_format)


def write_sat_model_states(
    path: Path, targets: list[TensorTarget], prefix: str = "", wrapper: str = "module", desc: str = "writing"
) -> None:
    """A torch zip file holding `{wrapper: {prefix + name: tensor}}`, written one tensor record at a time.

    The same records `torch.save` writes (data.pkl, byteorder, data/<i>), through torch's zip writer; the pickle
    refers to each storage by key, so every tensor is built only when its record is written.
    """
    refs = [_StorageRef(str(i), t.dtype, math.prod(t.shape)) for i, t in enumerate(targets)]
    module = {prefix + t.name: _TensorRef(ref, t.shape) for t, ref in zip(targets, refs, strict=True)}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _StorageRef):
                return ("storage", _storage_type(obj.dtype), obj.key, "cpu", obj.numel)
            return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({wrapper: module})
    data = buffer.getvalue()
    with torch.serialization._open_zipfile_writer(str(path)) as zip_file:
        zip_file.write_record("data.pkl", data, len(data))
        zip_file.write_record(".format_version", "1", 1)
        zip_file.write_record("byteorder", sys.byteorder, len(sys.byteorder))
        with tqdm(total=len(targets), desc=desc, unit="tensor", leave=False, disable=None) as progress:
            for t, ref in zip(targets, refs, strict=True):
                tensor = _alone_on_storage(t.materialize())
                storage = tensor.untyped_storage()
                zip_file.write_record(f"data/{ref.key}", storage, storage.nbytes())
                del tensor, storage
                progress.update(1)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_sat_checkpoint_folder(out: Path, targets: list[TensorTarget], desc: str = "sat") -> Path:
    """SAT's checkpoint layout: `out/1/mp_rank_00_model_states.pt`, `out/model_config.json`, `out/latest`."""
    weights = out / str(SAT_ITERATION) / MODEL_STATES
    weights.parent.mkdir(parents=True)
    write_sat_model_states(weights, targets, DIT_PREFIX, desc=desc)
    (out / "model_config.json").write_text(json.dumps(SAT_MODEL_CONFIG, indent=4))
    (out / "latest").write_text(str(SAT_ITERATION))
    return weights
