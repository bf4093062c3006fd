"""The T5 conditioner: SAT's tokenisation (max-length padding, EOS, no attention mask) on a tiny T5 built offline."""

import pytest
import sentencepiece as spm
import torch

from cogvid.config.schema import Uncond
from cogvid.diffusion.conditioning import unconditional_context
from cogvid.models.t5 import T5Conditioner
from cogvid.utils.errors import CogvidError


def test_tokenises_with_the_trained_vocabulary_pads_to_max_length_and_appends_eos(tiny_t5_dir):
    t5 = T5Conditioner.from_pretrained(str(tiny_t5_dir), max_length=12)
    pieces = spm.SentencePieceProcessor(model_file=str(tiny_t5_dir / "spiece.model")).encode("a red fox in snow")
    ids = t5.tokenizer(["a red fox in snow"], truncation=True, max_length=12, padding="max_length").input_ids[0]
    assert ids == pieces + [1] + [0] * (12 - len(pieces) - 1)  # the real pieces (not a dummy vocab), EOS, pad 0
    assert len(set(pieces)) > 3


def test_encode_shape_and_no_attention_mask(tiny_t5_dir):
    t5 = T5Conditioner.from_pretrained(str(tiny_t5_dir), max_length=8)
    out = t5.encode(["a red fox in snow", "a cat"])
    assert out.shape == (2, 8, 32)
    # no mask: the padding positions are encoded like tokens and differ from each other (relative attention)
    ids = t5.tokenizer(["a cat"], truncation=True, max_length=8, padding="max_length", return_tensors="pt").input_ids
    expected = t5.encoder(input_ids=ids).last_hidden_state
    assert torch.allclose(out[1:], expected, atol=1e-6)
    masked = t5.encoder(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
    assert not torch.allclose(out[1:], masked, atol=1e-4)


def test_truncates_long_prompts(tiny_t5_dir):
    t5 = T5Conditioner.from_pretrained(str(tiny_t5_dir), max_length=8)
    assert t5.encode(["the quick brown fox jumps over the lazy dog " * 20]).shape == (1, 8, 32)


def test_unconditional_is_zeros_or_the_negative_prompt(tiny_t5_dir):
    t5 = T5Conditioner.from_pretrained(str(tiny_t5_dir), max_length=8)
    cond = t5.encode(["a red fox"])
    assert torch.equal(unconditional_context(Uncond.zeros, cond, t5.encode, [""]), torch.zeros_like(cond))
    assert torch.allclose(unconditional_context(Uncond.negative_prompt, cond, t5.encode, [""]), t5.encode([""]))
    assert torch.allclose(unconditional_context(Uncond.negative_prompt, cond, t5.encode), t5.encode([""]))
    with pytest.raises(CogvidError, match="negative_prompt needs"):
        unconditional_context(Uncond.negative_prompt, cond)


def test_diffusers_pipeline_layout_is_accepted(tiny_t5_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_t5_dir, tmp_path / "text_encoder")
    shutil.copytree(tiny_t5_dir, tmp_path / "tokenizer")
    a = T5Conditioner.from_pretrained(str(tmp_path), max_length=8).encode(["a cat"])
    b = T5Conditioner.from_pretrained(str(tiny_t5_dir), max_length=8).encode(["a cat"])
    assert torch.equal(a, b)


@pytest.mark.parametrize("path", ["/nonexistent/t5-v1_1-xxl", "./t5", "a/b/c"])
def test_missing_folder_is_one_clear_line(path):
    with pytest.raises(CogvidError, match="t5-v1_1-xxl/") as err:
        T5Conditioner.from_pretrained(path, max_length=8)
    assert "\n" not in str(err.value)


def test_a_folder_without_weights_is_one_clear_line(tmp_path):
    with pytest.raises(CogvidError, match="holds no config.json") as err:
        T5Conditioner.from_pretrained(str(tmp_path), max_length=8)
    assert "\n" not in str(err.value)
    (tmp_path / "config.json").write_text('{"model_type": "t5", "vocab_size": 32}')  # a config of no sizes
    with pytest.raises(CogvidError, match="has no 'd_model': it is not a T5 config") as err:
        T5Conditioner.from_pretrained(str(tmp_path), max_length=8)
    assert "\n" not in str(err.value)
