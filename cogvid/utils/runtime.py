"""Where and in what precision a run computes."""

from __future__ import annotations

import os
import resource
import sys

import torch

from cogvid.config.schema import Dtype
from cogvid.utils.errors import CogvidError

# Every dtype cogvid reads or writes, under each name it goes by: the config's Dtype, Lightning's precision, the
# safetensors header code, and the legacy storage class a torch zip file's pickle names.
#        torch dtype     config       Lightning     safetensors  torch storage class
_DTYPES = (
    (torch.float32, Dtype.fp32, "32", "F32", "FloatStorage"),
    (torch.float16, Dtype.fp16, "16-mixed", "F16", "HalfStorage"),
    (torch.bfloat16, Dtype.bf16, "bf16-mixed", "BF16", "BFloat16Storage"),
    (torch.float64, None, None, "F64", "DoubleStorage"),
    (torch.int64, None, None, "I64", "LongStorage"),
    (torch.int32, None, None, "I32", "IntStorage"),
    (torch.int16, None, None, "I16", "ShortStorage"),
    (torch.int8, None, None, "I8", "CharStorage"),
    (torch.uint8, None, None, "U8", "ByteStorage"),
    (torch.bool, None, None, "BOOL", "BoolStorage"),
)
TORCH_DTYPES = {config: dtype for dtype, config, *_ in _DTYPES if config is not None}
PRECISION_DTYPES = {precision: dtype for dtype, _, precision, *_ in _DTYPES if precision is not None}
DTYPE_PRECISIONS = {config.value: precision for _, config, precision, *_ in _DTYPES if config is not None}
SAFETENSORS_DTYPES = {code: dtype for dtype, _, _, code, _ in _DTYPES}
SAFETENSORS_NAMES = {dtype: code for dtype, _, _, code, _ in _DTYPES}
STORAGE_NAMES = {dtype: storage for dtype, *_, storage in _DTYPES}


def torch_dtype(name: str | Dtype | None) -> torch.dtype | None:
    """fp32 / fp16 / bf16 (a config value) as a torch dtype; None stays None."""
    return None if name is None else TORCH_DTYPES[Dtype(name)]


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bfloat16'."""
    return str(dtype).removeprefix("torch.")


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment (torchrun, SLURM via Lightning); (0, 1, 0)
    when none is set."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", 1))
    return rank, world, int(os.environ.get("LOCAL_RANK", 0))


def peak_memory_gb(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last reset on a GPU; the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024**3 if sys.platform == "darwin" else 1024**2)


def resolve_device_dtype(cfg, local_rank: int | None = None) -> tuple[torch.device, torch.dtype, torch.dtype]:
    """(device, dtype, vae_dtype): device=auto picks CUDA when present (under torchrun, `local_rank`'s GPU);
    dtype=null picks model.dtype on an accelerator and fp32 on the CPU; vae_dtype=null is the dtype."""
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and local_rank is not None and torch.cuda.is_available():
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError as ex:
        raise CogvidError(f"device={cfg.device} is not a device torch knows ({ex})") from ex
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CogvidError(f"device={cfg.device} but torch sees no CUDA device here; use device=cpu")
    if cfg.dtype is not None:
        dtype = torch_dtype(cfg.dtype)
    else:
        dtype = torch_dtype(cfg.model.dtype) if device.type != "cpu" else torch.float32
    return device, dtype, torch_dtype(cfg.get("vae_dtype")) or dtype
