"""safetensors (diffusers' format) read and written tensor by tensor, so a conversion never holds a whole checkpoint
in RAM.

* `read_safetensors`: a `TensorSource` over one file or its shards; the header is parsed here and each tensor is read
  with `pread` into its own buffer (no mapping of the file, so only the tensor being converted is resident).
* `write_safetensors_shards`: `TensorTarget`s as diffusers' `diffusion_pytorch_model[-0000i-of-0000n].safetensors`
  (+ `.index.json`), one tensor at a time.

SAT's torch zip files are read and written by `cogvid.sat.checkpoint`.
"""

from __future__ import annotations

import json
import os
import re
import reprlib
import struct
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cogvid.utils.errors import CogvidError
from cogvid.utils.files import writing
from cogvid.utils.lazy_tensors import TensorSource, TensorTarget
from cogvid.utils.runtime import SAFETENSORS_NAMES
from cogvid.utils.user_files import read_json, read_safetensors_header

# ------------------------------------------------------------------------------------------------------------
# Reading


class _SafetensorsFile:
    """One .safetensors file: its header checked (`read_safetensors_header`), each tensor read with pread."""

    def __init__(self, path: Path):
        self.path = path
        header = read_safetensors_header(path)
        self.metadata, self.data_start, self.entries = header.metadata, header.data_start, header.entries

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


def _is_file_name(name: str) -> bool:
    return name.isprintable() and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def find_weight_files(folder: Path, stem: str) -> list[Path]:
    """`stem.safetensors`, or the shards its `stem.safetensors.index.json` names, in `folder`."""
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        data = read_json(index, top=object)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if weight_map is None:
            raise CogvidError(f"{index} is not a safetensors index (no weight_map)")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CogvidError(f"{index} is not a safetensors index (weight_map is not a non-empty object)")
        # A shard is a file of this folder: a path elsewhere ("../x", "/etc/x") is refused, not read.
        for name in weight_map.values():
            if not isinstance(name, str) or not _is_file_name(name):
                raise CogvidError(f"{index} names a shard {reprlib.repr(name)} that is not a file name in {folder}")
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


# ------------------------------------------------------------------------------------------------------------
# Writing


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


def _safetensors_header(
    entries: list[tuple[str, torch.dtype, tuple[int, ...], int]], metadata: dict[str, str]
) -> bytes:
    """The length-prefixed header of a safetensors file holding (name, dtype, shape, nbytes) in order: written here,
    in the order given and with sorted metadata, so the same tensors always give the same bytes (the safetensors
    package writes its metadata in a hash map's order, which changes from process to process)."""
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {
            "dtype": SAFETENSORS_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(text)) + text


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A whole safetensors file of small CPU tensors, byte for byte the same for the same tensors and metadata."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    entries = [(name, t.dtype, tuple(t.shape), t.numel() * t.element_size()) for name, t in tensors.items()]
    data = [t.reshape(-1).view(torch.uint8).numpy().tobytes() for t in tensors.values() if t.numel()]
    return _safetensors_header(entries, metadata) + b"".join(data)


def _write_safetensors_file(path: Path, targets: list[TensorTarget], metadata: dict[str, str], progress) -> None:
    header = _safetensors_header([(t.name, t.dtype, tuple(t.shape), t.nbytes) for t in targets], metadata)
    with writing(path), open(path, "wb") as f:
        f.write(header)
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
        index_file = folder / f"{stem}.safetensors.index.json"
        with writing(index_file):
            index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [folder / n for n in names]
