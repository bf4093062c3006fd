"""Shared test helpers: the SAT reference fixture and tiny configs composed from the real config tree."""

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from build_tiny_t5 import build_tiny_t5  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "sat_tiny_2b"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE


def reference(name: str) -> dict[str, torch.Tensor]:
    """One of the fixture's safetensors files (outputs of the original SAT code)."""
    return load_file(FIXTURE / f"{name}.safetensors")


@pytest.fixture(autouse=True)
def _deterministic_threads(request):
    """2 intra-op threads, or the module's TORCH_THREADS (1 where tensors are so tiny that threads only spin)."""
    torch.set_num_threads(getattr(request.module, "TORCH_THREADS", 2))


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    """A tiny T5 in the SAT release layout (spiece.model + config.json + weights), built offline in the test:
    a sentencepiece tokenizer trained here, a random encoder (seed 0) with d_model 32, the tiny DiT's text width."""
    return build_tiny_t5(tmp_path_factory.mktemp("t5-v1_1-tiny"))
