"""Prompts work as typed: free-text values are quoted before Hydra parses them, and come out character for
character in the composed config."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from cogvid.cli.free_text import hydra_quote, quote_free_text
from cogvid.config.compose import compose

TORCH_THREADS = 1
TEXTS = [
    "a fox's tail",
    "a fox, running",
    'she said "hi", then left',
    "a = b (c) [d] {e} <f>",
    "costs $5, or ${oc.env:HOME} and ${x}",
    "back\\slash, a trailing one\\",
    "two before a quote\\\\' and one \\'",
    "ends in a quote'",
    "'starts with a quote",
    "un café à Zürich, 日本の狐 🦊",
    "  spaces around  ",
    "key=value, choice(a,b)",
    "tab\tand newline\nin it",
]


@pytest.mark.parametrize("text", TEXTS)
def test_a_quoted_value_parses_back_to_the_text(text):
    override = OverridesParser.create().parse_override(f"infer.prompt={hydra_quote(text)}")
    assert not override.is_sweep_override()
    cfg = compose(quote_free_text([f"infer.prompt={text}", f"infer.negative_prompt={text}"]))
    assert cfg.infer.prompt == text and cfg.infer.negative_prompt == text


def test_other_values_are_left_as_hydra_reads_them():
    args = [
        "model=2b",
        "sampler.guidance_scale=3,6",  # a sweep of another key
        "infer.prompt='already quoted, as Hydra wants'",
        "infer.negative_prompt=null",
        "++infer.prompt=choice(a fox,a cat)",
        "~infer.prompt",
        "infer.prompt=",
    ]
    assert quote_free_text(args) == args
    assert quote_free_text(["+infer.prompt=a fox's tail"]) == ["+infer.prompt='a fox\\'s tail'"]
