"""Where prompts come from: `infer.prompt`, a prompts file (SAT's txt input) or standard input (SAT's cli input).

Every prompt becomes a `PromptJob` with its index in the run. Under torchrun, rank r takes the jobs whose index is
r, r + W, ... (SAT's `cnt % world_size`), so every rank names its files by the same global index and none is
duplicated. An image-to-video line is `prompt@@image_path`, as in SAT.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from cogvid.utils.errors import CogvidError

IMAGE_SEPARATOR = "@@"


@dataclass(frozen=True)
class PromptJob:
    index: int  # position among the run's prompts, from 0
    prompt: str
    image: str | None  # I2V image of this prompt (None: infer.image)
    source: str  # where it came from, for messages: "infer.prompt", "prompts.txt:3", "stdin:2"


def _exists(path: str) -> bool:
    """Path(path).exists(), False for a name the OS refuses (too long: ENAMETOOLONG) as for a missing file."""
    try:
        return Path(path).exists()
    except OSError:
        return False


def _job(index: int, text: str, source: str, base_dir: Path | None) -> PromptJob:
    prompt, image = text, None
    if IMAGE_SEPARATOR in text:
        prompt, image = (part.strip() for part in text.split(IMAGE_SEPARATOR, 1))
        if not image:
            raise CogvidError(f"{source}: nothing after '{IMAGE_SEPARATOR}' (expected prompt@@image_path)")
        if "\0" in image:  # no file name holds one, and os.stat refuses it with ValueError
            raise CogvidError(f"{source}: the image path after '{IMAGE_SEPARATOR}' holds a NUL character")
        if base_dir is not None and not Path(image).is_absolute() and not _exists(image):
            image = str(base_dir / image)  # relative to the prompts file when not relative to the working dir
    if not prompt:
        raise CogvidError(f"{source}: the prompt is empty")
    return PromptJob(index, prompt, image, source)


def read_prompts_file(path: str) -> list[PromptJob]:
    """One prompt per line (stripped, blank lines skipped), strictly UTF-8."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise CogvidError(f"infer.prompts_file={path} is a folder, not a text file of prompts")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise CogvidError(f"infer.prompts_file={path}: no such file") from None
    except OSError as ex:
        raise CogvidError(f"infer.prompts_file={path} cannot be read ({ex.strerror or ex})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as ex:
        line = data[: ex.start].count(b"\n") + 1
        raise CogvidError(
            f"infer.prompts_file={path} is not UTF-8 text (byte 0x{data[ex.start]:02x} on line {line})"
        ) from None
    jobs = []
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        if line.strip():
            jobs.append(_job(len(jobs), line.strip(), f"{path}:{number}", p.parent))
    if not jobs:
        raise CogvidError(f"infer.prompts_file={path} holds no prompts (only blank lines)")
    return jobs


def read_interactive(stream: TextIO) -> Iterator[PromptJob]:
    """Prompts typed on standard input, one per line, until EOF; each is yielded as soon as it is read."""
    index = 0
    number = 0
    typing = hasattr(stream, "isatty") and stream.isatty()
    while True:
        if typing:
            print("prompt (Ctrl-D to finish)> ", end="", file=sys.stderr, flush=True)
        try:
            line = stream.readline()
            # under a C/POSIX locale Python reads stdin with surrogateescape: bad bytes become lone surrogates
            line.encode("utf-8")
        except (UnicodeDecodeError, UnicodeEncodeError) as ex:
            raise CogvidError(f"standard input line {number + 1} is not UTF-8 text ({ex.reason})") from None
        if not line:
            return
        number += 1
        if line.strip():
            yield _job(index, line.strip(), f"stdin:{number}", None)
            index += 1


def prompt_jobs(infer, stdin: TextIO | None = None) -> Iterable[PromptJob]:
    """The run's prompts from exactly one of infer.prompt, infer.prompts_file, infer.interactive."""
    given = [
        name
        for name, on in (
            ("infer.prompt", infer.prompt is not None),
            ("infer.prompts_file", infer.prompts_file is not None),
            ("infer.interactive", bool(infer.interactive)),
        )
        if on
    ]
    if len(given) != 1:
        which = "none" if not given else " and ".join(given)
        raise CogvidError(
            f'give exactly one prompt source (got {which}): infer.prompt="...", infer.prompts_file=PATH '
            "or infer.interactive=true"
        )
    if infer.prompt is not None:
        text = str(infer.prompt).strip()
        if not text:
            raise CogvidError("infer.prompt is empty")
        return [PromptJob(0, text, None, "infer.prompt")]
    if infer.prompts_file is not None:
        return read_prompts_file(str(infer.prompts_file))
    return read_interactive(stdin if stdin is not None else sys.stdin)


def shard(indices: Iterable[int], rank: int, world_size: int) -> Iterator[int]:
    """This rank's job indices: r, r + W, r + 2W, ..."""
    return (index for index in indices if index % world_size == rank)
