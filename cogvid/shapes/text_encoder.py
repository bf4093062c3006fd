"""The shapes model's text encoder: a small random T5 whose sentencepiece tokenizer is trained on shape captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cogvid.shapes.dataset import (
    COLOURS,
    DIRECTIONS,
    PARAPHRASES,
    RESERVED_COLOURS,
    RESERVED_SHAPES,
    SHAPES,
    SIZE_RANGE,
    caption,
    plain_caption,
    training_combinations,
)
from cogvid.shapes.small_t5 import SmallT5Sizes, build_small_t5

# d_model is the shapes DiT's text_hidden_size (conf/model/shapes.yaml). A word-level tokenizer: the captions use
# about 30 words, each one piece; sentencepiece's unigram and BPE models on so small a corpus leave words in pieces.
SHAPES_T5 = SmallT5Sizes(
    vocab_size=64, tokenizer_model="word", d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4
)
CORPUS_SEED = 0


def reserved_captions() -> list[str]:
    """A plain caption for every combination with a reserved word (cyan, ring): they put those words in the
    tokenizer's vocabulary, and no base training clip is captioned with one."""
    colours, shapes = [*COLOURS, *RESERVED_COLOURS], [*SHAPES, *RESERVED_SHAPES]
    return [
        plain_caption(c, s, d)
        for c in colours
        for s in shapes
        for d in DIRECTIONS
        if c in RESERVED_COLOURS or s in RESERVED_SHAPES
    ]


def caption_corpus(seed: int = CORPUS_SEED) -> list[str]:
    """Every training combination's plain caption and each of its paraphrases, at the three sizes, and the
    `reserved_captions`."""
    rng = np.random.default_rng(seed)
    sizes = (SIZE_RANGE[0], sum(SIZE_RANGE) / 2, SIZE_RANGE[1])
    corpus = []
    for colour, shape, direction in training_combinations():
        corpus.append(caption(colour, shape, direction, rng, paraphrase_p=0.0))
        for size in sizes:
            for _ in range(2 * len(PARAPHRASES)):
                corpus.append(caption(colour, shape, direction, rng, paraphrase_p=1.0, size=size))
    return corpus + reserved_captions()


def build_shapes_t5(folder: str | Path, seed: int = 0) -> Path:
    """Write the shapes T5 (spiece.model + config.json + weights) into `folder`; the same bytes for the same seed."""
    return build_small_t5(folder, caption_corpus(), SHAPES_T5, seed=seed, exact_vocab=False)
