"""Prompts as the user types them: free-text override values quoted before Hydra parses the command line.

Hydra's override grammar gives meaning to `'`, `"`, `,`, `=`, brackets, braces, `$` and spaces around them, so
`infer.prompt="a fox's tail"` (the shell passes `infer.prompt=a fox's tail`) stops in its lexer, and
`infer.prompt="a fox, running"` is "Ambiguous value" (or a sweep of two prompts under `-m`). For the keys in
FREE_TEXT_KEYS the whole value after the first `=` is the text: it is wrapped in single quotes, with Hydra's escapes
(a backslash run before a quote, or at the very end, is doubled; a quote gets a backslash) and OmegaConf's escape
for an interpolation (`${` -> `\\${`), so the config holds exactly the typed characters.

Left as they are: values already quoted whole (`infer.prompt='"a fox"'` in the shell), `null`, the empty value and
Hydra's sweep functions (`infer.prompt="choice(a fox,a cat)"`).
"""

from __future__ import annotations

import re

FREE_TEXT_KEYS = ("infer.prompt", "infer.negative_prompt")
_OVERRIDE = re.compile(r"^(?P<prefix>~|\+{1,2})?(?P<key>[\w.]+)=(?P<value>.*)$", re.DOTALL)
_SWEEP = re.compile(r"^(choice|range|interval|glob|sort|shuffle|tag)\(.*\)$", re.DOTALL)
_BACKSLASHES_BEFORE_QUOTE = re.compile(r"(\\*)'")
_TRAILING_BACKSLASHES = re.compile(r"(\\+)$")


def hydra_quote(text: str) -> str:
    """`text` as a single-quoted Hydra override value that parses back to exactly `text`."""
    body = _BACKSLASHES_BEFORE_QUOTE.sub(lambda m: m.group(1) * 2 + "\\'", text)
    body = _TRAILING_BACKSLASHES.sub(lambda m: m.group(1) * 2, body)
    return "'" + body.replace("${", "\\${") + "'"


def _already_quoted(value: str) -> bool:
    return len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]


def quote_free_text(args: list[str]) -> list[str]:
    """The command-line arguments with every FREE_TEXT_KEYS value quoted (see the module doc); others unchanged."""
    quoted = []
    for arg in args:
        match = _OVERRIDE.match(arg)
        if match and match["key"] in FREE_TEXT_KEYS and match["prefix"] != "~":
            value = match["value"]
            if value and value != "null" and not _already_quoted(value) and not _SWEEP.match(value):
                arg = f"{match['prefix'] or ''}{match['key']}={hydra_quote(value)}"
        quoted.append(arg)
    return quoted
