"""Numbered names in a folder that several processes write into: `<index>_<rest>`, each index claimed by one writer.

A writer stages its files under temp names, then `claim_first_free` holds the folder's lock and gives them the final
names of the first index from its wanted one on that no entry of the folder starts with. Each rename fails when the
name exists (`cogvid.utils.files.rename_no_replace`), so a writer that does not take the lock can never be replaced
either: the claim gives the names back and moves on to the next index.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from cogvid.utils.files import fsync_path, rename_no_replace
from cogvid.utils.locks import hold_lock

INDEX_PREFIX = re.compile(r"^(\d{4,})_")  # an entry's index: its leading digits (4 at least) before '_'
CLAIM_LOCK = ".claims.lock"  # held while a writer picks its index and takes its names


def used_indices(folder: Path) -> set[int]:
    """Every `<index>_` prefix among the entries of `folder`: an index any entry has is taken, whatever follows it."""
    if not folder.is_dir():
        return set()
    return {int(m.group(1)) for p in folder.iterdir() if (m := INDEX_PREFIX.match(p.name))}


def next_free_index(folder: Path) -> int:
    """1 + the highest `<index>_` prefix in `folder` (0 when it holds none): where a writer starts numbering, a hint
    only (another writer may take these indices first; `claim_first_free` decides)."""
    return max(used_indices(folder), default=-1) + 1


def claim_first_free(folder: Path, index: int, stem_of: Callable[[int], str], staged: Mapping[str, Path]) -> list[Path]:
    """Rename the finished temp files `staged` ({suffix: path}, in order: the one that marks completion last) to
    `folder / (stem_of(i) + suffix)` for the first free index `i` from `index` on, all of one index and none replacing
    a file; returns the final paths in the order of `staged`."""
    with hold_lock(folder / CLAIM_LOCK):
        taken = used_indices(folder)
        while True:
            while index in taken:
                index += 1
            stem = stem_of(index)
            done: list[tuple[Path, Path]] = []
            try:
                for suffix, tmp in staged.items():
                    final = folder / f"{stem}{suffix}"
                    rename_no_replace(tmp, final)
                    done.append((final, tmp))
            except FileExistsError:  # a writer that does not take the lock got there first: give the names back
                for final, tmp in reversed(done):
                    os.replace(final, tmp)
                taken.add(index)
                continue
            fsync_path(folder)
            return [final for final, _ in done]
