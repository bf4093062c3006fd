"""Tensors known by name, shape and dtype before their data: read one at a time from a file, or built one at a time
when written, so a conversion never holds a whole checkpoint in memory.

* `TensorSource`: names, shapes and dtypes up front, the data of one tensor on demand (`mapped_source` over a
  memory-mapped torch file hands each tensor's pages back to the kernel once it is copied out).
* `TensorTarget`: one tensor to write, built just before it is written.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch


def nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


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


@dataclass(frozen=True)
class TensorTarget:
    """One tensor to write: its name, shape and dtype, and how to build it (called once, just before writing)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    build: Callable[[], torch.Tensor]

    @classmethod
    def from_tensor(cls, name: str, tensor: torch.Tensor) -> TensorTarget:
        """A tensor already in memory, written as it is."""
        return cls(name, tuple(tensor.shape), tensor.dtype, lambda: tensor)

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)

    def materialize(self) -> torch.Tensor:
        t = self.build()
        if tuple(t.shape) != tuple(self.shape):  # the key map promised this shape; a mismatch is a bug
            raise AssertionError(f"{self.name}: built {tuple(t.shape)}, planned {self.shape}")
        return t.to(self.dtype).contiguous()
