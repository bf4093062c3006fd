"""Build the tiny T5 of `model=tiny` offline, in the SAT release layout: a sentencepiece tokenizer trained here and a
random encoder (seed 0, d_model 32).

    python scripts/build_tiny_t5.py outputs/tiny_t5

The tests and the SAT-fixture runs use it in place of t5-v1_1-xxl, which the machines here cannot download.
"""

from __future__ import annotations

import sys
from pathlib import Path

CORPUS = [
    "a red fox in snow",
    "a cat sleeping on a warm mat",
    "the quick brown fox jumps over the lazy dog",
    "waves crash on the beach at sunset",
    "a panda eats bamboo in a green forest",
    "an astronaut riding a horse",
]


def build_tiny_t5(folder: str | Path) -> Path:
    """Write spiece.model + config.json + weights into `folder` (created) and return it."""
    from cogvid.shapes.small_t5 import build_small_t5

    return build_small_t5(folder, CORPUS * 20)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/build_tiny_t5.py OUT_DIR")
    print(build_tiny_t5(sys.argv[1]))
