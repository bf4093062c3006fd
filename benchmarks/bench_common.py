"""What the benchmark scripts share: the description of a run that every results file carries, writing the results,
running a contender in a child process, the process's memory figures from /proc, and PSNR of two uint8 videos."""

from __future__ import annotations

import json
import math
import platform
import shlex
import subprocess
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


def write_results(folder: Path, name: str, payload: dict, table: str) -> None:
    """folder/name.json (the payload) and folder/name.md (the markdown table), and a line saying so."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (folder / f"{name}.md").write_text(table.rstrip("\n") + "\n")
    print(f"wrote {folder / name}.json and .md")


RESULT = "RESULT "  # a child process's one line of figures


def report(figures: dict) -> None:
    """What a child process prints for `run_child`: one line of JSON after RESULT."""
    print(RESULT + json.dumps(figures), flush=True)


def run_child(cmd: list[str], label: str, **kwargs) -> dict | None:
    """Run a benchmark's child process (kwargs: subprocess.run's env, cwd) and return the figures it `report`ed;
    None, with the end of its stderr printed, when it printed none."""
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    line = next((x for x in out.stdout.splitlines() if x.startswith(RESULT)), None)
    if line is None:
        print(f"{label} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(line[len(RESULT) :])


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
