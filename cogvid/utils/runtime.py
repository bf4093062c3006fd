"""Where and in what precision a run computes."""

from __future__ import annotations

import os
import resource
import sys

import torch

from cogvid.config.schema import Dtype
from cogvid.utils.errors import CogvidError

TORCH_DTYPES = {Dtype.fp32: torch.float32, Dtype.fp16: torch.float16, Dtype.bf16: torch.bfloat16}


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


def resolve_device_dtype(cfg) -> tuple[torch.device, torch.dtype]:
    """device=auto picks CUDA when present; dtype=null picks model.dtype on an accelerator and fp32 on the CPU."""
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as ex:
        raise CogvidError(f"device={cfg.device} is not a device torch knows ({ex})") from ex
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CogvidError(f"device={cfg.device} but torch sees no CUDA device here; use device=cpu")
    if cfg.dtype is not None:
        dtype = TORCH_DTYPES[Dtype(cfg.dtype)]
    else:
        dtype = TORCH_DTYPES[Dtype(cfg.model.dtype)] if device.type != "cpu" else torch.float32
    return device, dtype
