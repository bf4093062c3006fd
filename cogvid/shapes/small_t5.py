"""A small T5 built offline: a sentencepiece tokenizer trained on a corpus and a randomly initialised encoder.

The folder has the layout of SAT's `t5-v1_1-xxl/` (spiece.model, config.json, weights), so `model.text_encoder.path`
and `cogvid-export` read it as they read the real one. A frozen random encoder is enough for a model trained against
it from scratch: the DiT learns to read whatever features it gives, as long as different prompts give different ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cogvid.utils.errors import CogvidError


@dataclass(frozen=True)
class SmallT5Sizes:
    """T5EncoderModel sizes (transformers' T5Config names) and the tokenizer's vocabulary size."""

    vocab_size: int = 48
    tokenizer_model: str = "unigram"  # sentencepiece model_type: unigram | bpe | word | char
    d_model: int = 32
    d_kv: int = 8
    d_ff: int = 64
    num_layers: int = 2
    num_heads: int = 4
    relative_attention_num_buckets: int = 8
    relative_attention_max_distance: int = 16


def train_tokenizer(
    folder: Path, corpus: Sequence[str], vocab_size: int, exact_vocab: bool = True, model_type: str = "unigram"
) -> Path:
    """Train a sentencepiece model on `corpus` into `folder/spiece.model`, with T5's special ids
    (pad 0, eos 1, unk 2, no bos). `exact_vocab=False` lets a small corpus settle below `vocab_size`."""
    import sentencepiece as spm

    text, prefix = folder / "corpus.txt", folder / "spiece"
    text.write_text("\n".join(corpus))
    try:
        spm.SentencePieceTrainer.train(
            input=str(text),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            **({} if exact_vocab else {"hard_vocab_limit": False}),
            model_type=model_type,
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
    finally:
        text.unlink(missing_ok=True)
        prefix.with_suffix(".vocab").unlink(missing_ok=True)
    model = prefix.with_suffix(".model")
    _forget_paths(model)
    return model


def _forget_paths(model_file: Path) -> None:
    """Drop the corpus and output paths sentencepiece records in the model, so the bytes depend on the corpus alone."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    proto.trainer_spec.ClearField("input")
    proto.trainer_spec.ClearField("model_prefix")
    model_file.write_bytes(proto.SerializeToString())


def build_small_t5(
    folder: str | Path, corpus: Sequence[str], sizes: SmallT5Sizes = SmallT5Sizes(), seed: int = 0, exact_vocab=True
) -> Path:
    """Write spiece.model + config.json + weights into `folder` (created) and return it.

    With `exact_vocab=False` the encoder's vocabulary is the size the tokenizer reached."""
    import sentencepiece as spm
    import torch
    from transformers import T5Config, T5EncoderModel

    if not corpus:
        raise CogvidError("a small T5 needs a corpus to train its tokenizer on")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_file = train_tokenizer(folder, corpus, sizes.vocab_size, exact_vocab, sizes.tokenizer_model)
    vocab_size = spm.SentencePieceProcessor(model_file=str(model_file)).get_piece_size()
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=sizes.d_model,
        d_kv=sizes.d_kv,
        d_ff=sizes.d_ff,
        num_layers=sizes.num_layers,
        num_heads=sizes.num_heads,
        relative_attention_num_buckets=sizes.relative_attention_num_buckets,
        relative_attention_max_distance=sizes.relative_attention_max_distance,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    T5EncoderModel(config).save_pretrained(folder)
    return folder
