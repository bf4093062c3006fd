"""What the benchmark scripts share: the description of a run that every results file carries, the process's memory
figures from /proc, and PSNR of two uint8 videos."""

from __future__ import annotations

import math
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def run_meta() -> dict[str, str]:
    """date (UTC), device (CPU model and torch threads), torch version and the command line of this run."""
    import torch

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }


def memory_kib(*fields: str) -> dict[str, int]:
    """This process's memory figures from /proc/self/status, in KiB (e.g. VmHWM, the peak resident set)."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            found[key] = int(value.split()[0])
    return found


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 videos of one shape (99 for identical ones)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)
