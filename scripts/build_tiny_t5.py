"""Build a tiny T5 in the SAT release layout, offline: a sentencepiece tokenizer trained here and a random encoder.

    python scripts/build_tiny_t5.py outputs/tiny_t5

The encoder (seed 0) has d_model 32, the width `model=tiny` expects; `make demo` and the tests use it in place of
t5-v1_1-xxl, which the machines here cannot download.
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
    import sentencepiece as spm
    import torch
    from transformers import T5Config, T5EncoderModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 20))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "spiece"),
        vocab_size=48,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        minloglevel=2,
        num_threads=1,
    )
    corpus.unlink()
    (folder / "spiece.vocab").unlink()
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=48,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    T5EncoderModel(config).save_pretrained(folder)
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/build_tiny_t5.py OUT_DIR")
    print(build_tiny_t5(sys.argv[1]))
