"""The T5 text conditioner (SAT `encoders/modules.py`, `FrozenT5Embedder`): prompts to (b, text_length, 4096) contexts.

As in the original: pad to max length, truncate, EOS appended by the tokenizer, and **no attention mask** (the padding
positions are encoded and used as context). The unconditional context is decided by
`cogvid.diffusion.conditioning.unconditional_context`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from cogvid.utils.errors import CogvidError
from cogvid.utils.user_files import read_json, read_safetensors_header, read_sentencepiece, require_fields

log = logging.getLogger(__name__)

RELEASE_LAYOUT = "a T5 folder as the SAT release lays it out (t5-v1_1-xxl/: spiece.model, config.json, weights)"


def t5_folders(path: str) -> tuple[str, str]:
    """(tokenizer dir, encoder dir) for a SAT-release folder, a diffusers pipeline folder, or a hub id."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "tokenizer").is_dir() and (p / "text_encoder").is_dir():  # a diffusers pipeline folder
            tokenizer, encoder = p / "tokenizer", p / "text_encoder"
        else:
            tokenizer, encoder = p, p
        if not (encoder / "config.json").is_file():
            raise CogvidError(f"model.text_encoder.path: {encoder} holds no config.json; expected {RELEASE_LAYOUT}")
        return str(tokenizer), str(encoder)
    if p.is_absolute() or path.startswith((".", "~")) or path.count("/") != 1:
        raise CogvidError(f"model.text_encoder.path: no folder at {path}; expected {RELEASE_LAYOUT}")
    return path, path  # a hub id such as google/t5-v1_1-xxl, for users with a network


# What cogvid reads of T5's config.json (the memory estimate and the width check): all positive integers.
T5_CONFIG_FIELDS = {"d_model": int, "d_ff": int, "num_layers": int, "num_heads": int, "d_kv": int, "vocab_size": int}
# Files of a saved tokenizer that transformers reads besides spiece.model, when they are there.
TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
SETTING = "model.text_encoder.path: "


def read_t5_config(encoder_dir: str | Path, text_hidden_size: int | None = None) -> dict:
    """T5's config.json, with the sizes cogvid reads; `text_hidden_size`: the DiT's text width, which d_model must
    equal."""
    config_file = Path(encoder_dir) / "config.json"
    config = read_json(config_file, SETTING)
    require_fields(config, config_file, T5_CONFIG_FIELDS, "a T5 config")
    if text_hidden_size is not None and config["d_model"] != text_hidden_size:
        raise CogvidError(
            f"{SETTING}{config_file} is a T5 of width d_model={config['d_model']}, but the model takes "
            f"text_hidden_size={text_hidden_size}: the T5 of another model?"
        )
    return config


def t5_weight_bytes(config: dict, dtype: torch.dtype) -> int:
    """The bytes of a T5 encoder's weights in `dtype`, from its config: embedding, per layer attention (q, k, v, o),
    feed-forward (gated: wi_0, wi_1, wo) and two norms, the final norm and the relative position bias."""
    d, d_ff, layers = config["d_model"], config["d_ff"], config["num_layers"]
    inner = config["num_heads"] * config["d_kv"]
    gated = str(config.get("feed_forward_proj", "relu")).startswith("gated")
    per_layer = 4 * d * inner + (3 if gated else 2) * d * d_ff + 2 * d
    params = config["vocab_size"] * d + layers * per_layer + d
    params += config.get("relative_attention_num_buckets", 32) * config["num_heads"]
    return params * dtype.itemsize


def local_t5_config(path) -> dict | None:
    """The config.json of a local `model.text_encoder.path` (SAT or diffusers layout); None for a hub id or none."""
    if not path:
        return None
    encoder = Path(t5_folders(str(path))[1])
    return read_t5_config(encoder) if encoder.is_dir() else None


def t5_weight_files(encoder_dir: Path) -> list[Path]:
    """model.safetensors, or the shards its index names (transformers' names); [] for a folder with only a torch
    `pytorch_model.bin`, which transformers loads itself."""
    from cogvid.interop.tensor_io import find_weight_files

    if not list(encoder_dir.glob("model*.safetensors*")) and (encoder_dir / "pytorch_model.bin").is_file():
        return []
    return find_weight_files(encoder_dir, "model")


def check_t5_folder(path: str, text_hidden_size: int | None = None) -> dict | None:
    """Read every file of a local T5 folder that loading it reads, through the guarded readers (config.json, the
    weights' headers, spiece.model or a saved tokenizer's JSON), before anything loads: a damaged file is one line.
    Returns the config; None for a hub id."""
    tokenizer_dir, encoder_dir = (Path(p) for p in t5_folders(path))
    if not encoder_dir.is_dir():
        return None
    config = read_t5_config(encoder_dir, text_hidden_size)
    for weights in t5_weight_files(encoder_dir):
        read_safetensors_header(weights)
    if (tokenizer_dir / "spiece.model").is_file():
        read_sentencepiece(tokenizer_dir / "spiece.model", SETTING)
    elif not (tokenizer_dir / "tokenizer.json").is_file():
        raise CogvidError(f"{SETTING}{tokenizer_dir} has no spiece.model or tokenizer.json; expected {RELEASE_LAYOUT}")
    for name in TOKENIZER_JSON:
        if (tokenizer_dir / name).is_file():
            read_json(tokenizer_dir / name, SETTING)
    return config


SENTINEL = re.compile(r"<extra_id_\d+>")  # T5's span-corruption tokens, appended after the sentencepiece pieces


def load_t5_tokenizer(path: str, vocab_size: int | None = None, **kwargs):
    """T5's tokenizer from `path` (spiece.model, or a saved tokenizer.json), with no more ids than `vocab_size`, the
    encoder's embedding rows, where that can be had by dropping sentinels.

    `T5Tokenizer` appends 100 sentinels (`<extra_id_N>`) after the sentencepiece pieces; t5-v1_1 has 128 spare rows
    for them, a small T5 whose vocabulary is its own corpus's pieces (`cogvid.shapes.small_t5`) has none, so a prompt
    holding "<extra_id_0>" would reach an id the encoder cannot embed. The sentinels that do not fit are dropped
    (that text then tokenises as ordinary text); no other id changes. A saved tokenizer.json keeps the sentinels it
    was saved with: the caller checks `len(tokenizer) <= vocab_size`. kwargs: `from_pretrained`'s, e.g.
    model_max_length.
    """
    from transformers import T5Tokenizer

    # from_pretrained, not T5Tokenizer(vocab_file=...): in transformers 5 the latter silently builds a dummy vocabulary
    tokenizer = T5Tokenizer.from_pretrained(path, **kwargs)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        sentinels = sum(1 for token in tokenizer.get_vocab() if SENTINEL.fullmatch(token))
        keep = sentinels - (len(tokenizer) - vocab_size)
        if keep >= 0:
            tokenizer = T5Tokenizer.from_pretrained(path, extra_ids=keep, **kwargs)
    return tokenizer


class T5Conditioner(nn.Module):
    """Frozen T5 encoder + its sentencepiece tokenizer; `encode(prompts)` gives (b, max_length, d_model)."""

    def __init__(self, tokenizer, encoder: nn.Module, max_length: int):
        super().__init__()
        self.tokenizer, self.encoder, self.max_length = tokenizer, encoder.eval().requires_grad_(False), max_length

    @classmethod
    def from_model_config(cls, model_cfg, dtype: torch.dtype = torch.float32, device="cpu") -> T5Conditioner:
        """T5 of a composed `model` group: `text_encoder.path`, with the model's text_length as max_length and its
        text_hidden_size checked."""
        path = model_cfg.text_encoder.get("path")
        if not path:
            raise CogvidError(
                "model.text_encoder.path is not set: give the T5 folder, e.g. "
                "model.text_encoder.path=/weights/t5-v1_1-xxl"
            )
        return cls.from_pretrained(
            str(path), model_cfg.text_length, dtype=dtype, device=device, text_hidden_size=model_cfg.text_hidden_size
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        max_length: int,
        dtype: torch.dtype = torch.float32,
        device="cpu",
        text_hidden_size: int | None = None,
    ):
        """T5 from `path` (see `from_model_config`); `text_hidden_size`: the width the DiT takes, checked."""
        from transformers import T5Config, T5EncoderModel

        check_t5_folder(path, text_hidden_size)
        tokenizer_dir, encoder_dir = t5_folders(path)
        try:
            vocab_size = T5Config.from_pretrained(encoder_dir).vocab_size
            tokenizer = load_t5_tokenizer(tokenizer_dir, vocab_size)
            encoder = T5EncoderModel.from_pretrained(encoder_dir, torch_dtype=dtype)
        except (OSError, ValueError) as ex:
            first = (str(ex).strip().splitlines() or [type(ex).__name__])[0]
            raise CogvidError(
                f"model.text_encoder.path: cannot load T5 from {path} ({first}); expected {RELEASE_LAYOUT}"
            ) from ex
        if len(tokenizer) > vocab_size:
            log.warning(
                "%s: the tokenizer has %d ids but the T5 encoder embeds %d; a prompt that reaches the others fails",
                path,
                len(tokenizer),
                vocab_size,
            )
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
