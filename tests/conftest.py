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


CORPUS = [
    "a red fox in snow",
    "a cat sleeping on a warm mat",
    "the quick brown fox jumps over the lazy dog",
    "waves crash on the beach at sunset",
    "a panda eats bamboo in a green forest",
    "an astronaut riding a horse",
]


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    """A tiny T5 in the SAT release layout (spiece.model + config.json + weights), built offline in the test.

    The tokenizer is a sentencepiece model trained here on a few sentences; the encoder is random (seed 0) with
    d_model 32, the tiny DiT's text_hidden_size.
    """
    import sentencepiece as spm
    from transformers import T5Config, T5EncoderModel

    folder = tmp_path_factory.mktemp("t5-v1_1-tiny")
    corpus = folder.parent / "t5_corpus.txt"
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
    )
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
