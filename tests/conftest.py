"""Shared test helpers: the SAT reference fixture and tiny configs composed from the real config tree."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURE = Path(__file__).parent / "fixtures" / "sat_tiny_2b"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE


def reference(name: str) -> dict[str, torch.Tensor]:
    """One of the fixture's safetensors files (outputs of the original SAT code)."""
    return load_file(FIXTURE / f"{name}.safetensors")


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(2)
