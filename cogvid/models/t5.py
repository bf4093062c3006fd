"""The T5 text conditioner (SAT `encoders/modules.py`, `FrozenT5Embedder`): prompts to (b, text_length, 4096) contexts.

As in the original: pad to max length, truncate, EOS appended by the tokenizer, and **no attention mask** (the padding
positions are encoded and used as context). The unconditional context is decided by
`cogvid.diffusion.conditioning.unconditional_context`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from cogvid.utils.errors import CogvidError

log = logging.getLogger(__name__)

RELEASE_LAYOUT = "a T5 folder as the SAT release lays it out (t5-v1_1-xxl/: spiece.model, config.json, weights)"


def t5_folders(path: str) -> tuple[str, str]:
    """(tokenizer dir, encoder dir) for a SAT-release folder, a diffusers pipeline folder, or a hub id."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "tokenizer").is_dir() and (p / "text_encoder").is_dir():  # a diffusers pipeline folder
            return str(p / "tokenizer"), str(p / "text_encoder")
        return str(p), str(p)
    if p.is_absolute() or path.startswith((".", "~")) or path.count("/") != 1:
        raise CogvidError(f"model.text_encoder.path: no folder at {path}; expected {RELEASE_LAYOUT}")
    return path, path  # a hub id such as google/t5-v1_1-xxl, for users with a network


class T5Conditioner(nn.Module):
    """Frozen T5 encoder + its sentencepiece tokenizer; `encode(prompts)` gives (b, max_length, d_model)."""

    def __init__(self, tokenizer, encoder: nn.Module, max_length: int):
        super().__init__()
        self.tokenizer, self.encoder, self.max_length = tokenizer, encoder.eval().requires_grad_(False), max_length

    @classmethod
    def from_pretrained(cls, path: str, max_length: int, dtype: torch.dtype = torch.float32, device="cpu"):
        from transformers import T5EncoderModel, T5Tokenizer

        tokenizer_dir, encoder_dir = t5_folders(path)
        try:
            # from_pretrained, not T5Tokenizer(vocab_file=...): in transformers 5 the latter silently builds a
            # dummy vocabulary.
            tokenizer = T5Tokenizer.from_pretrained(tokenizer_dir)
            encoder = T5EncoderModel.from_pretrained(encoder_dir, torch_dtype=dtype)
        except (OSError, ValueError) as ex:
            first = (str(ex).strip().splitlines() or [type(ex).__name__])[0]
            raise CogvidError(
                f"model.text_encoder.path: cannot load T5 from {path} ({first}); expected {RELEASE_LAYOUT}"
            ) from ex
        return cls(tokenizer, encoder.to(device), max_length)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            list(prompts), truncation=True, max_length=self.max_length, padding="max_length", return_tensors="pt"
        ).input_ids
        return self.encoder(input_ids=ids.to(self.device)).last_hidden_state


def load_text_encoder(cfg, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> T5Conditioner:
    """T5 of a composed config: `model.text_encoder.path` (a SAT `t5-v1_1-xxl` folder, a diffusers pipeline folder
    or a hub id), frozen, with the model's text_length as max_length."""
    path = cfg.model.text_encoder.get("path")
    if not path:
        raise CogvidError(
            "model.text_encoder.path is not set: give the T5 folder, e.g. model.text_encoder.path=/weights/t5-v1_1-xxl"
        )
    return T5Conditioner.from_pretrained(str(path), max_length=cfg.model.text_length, dtype=dtype, device=device)
