"""Key maps as data: ordered, anchored rules between SAT and diffusers state-dict names, used in both directions.

A rule names a key on each side with a template: literal text plus placeholders, `{i}` / `{j}` / `{u}` (a block
index), `{p}` (`weight` or `bias`) and `{rest}` (any dotted tail). Templates are anchored: the whole key must
match. The first rule whose template matches a key wins, in either direction, so a specific rule goes before a
general one.

* `Rename`: one tensor, same data. `mirror=("u", n)` renumbers an index as n - 1 - u (the VAE decoder's levels).
* `Split`: one fused SAT tensor <-> several diffusers tensors, cut along dim 0 into `chunks` equal pieces and
  regrouped (`groups`: which pieces, in order, make each diffusers tensor).
* `SatOnly`: a SAT tensor diffusers has no place for: dropped on export (with its reason), rebuilt on import by a
  function the caller supplies (it is fixed, derived from the config, or unused).

`plan(...)` maps the names and shapes of a source to `TensorTarget`s (built lazily, one at a time, when written)
and a `MappingReport` of what was dropped, rebuilt or could not be mapped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

import torch

from cogvid.utils.errors import CogvidError, first_few
from cogvid.utils.lazy_tensors import TensorInfo, TensorSource, TensorTarget

PLACEHOLDERS = {"i": r"\d+", "j": r"\d+", "u": r"\d+", "p": r"weight|bias", "rest": r"[\w.]+"}


class Side(str, Enum):
    sat = "sat"
    diffusers = "diffusers"

    @property
    def other(self) -> Side:
        return Side.diffusers if self is Side.sat else Side.sat


def _compile(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    pattern = ""
    for n, part in enumerate(parts):
        if n % 2:
            if part not in PLACEHOLDERS:
                raise ValueError(f"unknown placeholder {{{part}}} in {template!r}")
            pattern += f"(?P<{part}>{PLACEHOLDERS[part]})"
        else:
            pattern += re.escape(part)
    return re.compile(pattern)


@dataclass(frozen=True)
class Rename:
    sat: str
    diffusers: str
    mirror: tuple[str, int] | None = None  # (placeholder, n): the index is n - 1 - index on the other side

    def templates(self, side: Side) -> tuple[str, ...]:
        return (self.sat,) if side is Side.sat else (self.diffusers,)


@dataclass(frozen=True)
class Split:
    sat: str
    diffusers: tuple[str, ...]
    chunks: int
    groups: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        if len(self.groups) != len(self.diffusers) or sorted(c for g in self.groups for c in g) != list(
            range(self.chunks)
        ):
            raise ValueError(f"Split {self.sat}: groups {self.groups} do not use each of {self.chunks} chunks once")

    def templates(self, side: Side) -> tuple[str, ...]:
        return (self.sat,) if side is Side.sat else self.diffusers


@dataclass(frozen=True)
class SatOnly:
    sat: str
    why: str

    def templates(self, side: Side) -> tuple[str, ...]:
        return (self.sat,) if side is Side.sat else ()


Rule = Rename | Split | SatOnly


@dataclass
class MappingReport:
    """What a conversion did besides one-to-one copies."""

    mapped: int = 0
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (source key, why)
    rebuilt: list[tuple[str, str]] = field(default_factory=list)  # (target key, why)
    unmapped: list[str] = field(default_factory=list)  # source keys no rule matched

    def summary(self) -> str:
        parts = [f"{self.mapped} tensors written"]
        if self.dropped:
            parts.append(f"{len(self.dropped)} dropped ({first_few([k for k, _ in self.dropped])})")
        if self.rebuilt:
            parts.append(f"{len(self.rebuilt)} rebuilt ({first_few([k for k, _ in self.rebuilt])})")
        if self.unmapped:
            parts.append(f"{len(self.unmapped)} unmapped ({first_few(self.unmapped)})")
        return "; ".join(parts)


def _fill(template: str, values: Mapping[str, str]) -> str:
    return template.format(**values)


class KeyMap:
    """Ordered rules, applied to whole state dicts in either direction."""

    def __init__(self, rules: list[Rule], name: str):
        self.rules = list(rules)
        self.name = name
        self._compiled = {
            side: [(rule, [_compile(t) for t in rule.templates(side)]) for rule in self.rules] for side in Side
        }

    def match(self, key: str, side: Side) -> tuple[Rule, int, dict[str, str]] | None:
        """(rule, which of its templates on `side`, placeholder values) of the first rule matching `key`."""
        for rule, patterns in self._compiled[side]:
            for n, pattern in enumerate(patterns):
                found = pattern.fullmatch(key)
                if found:
                    return rule, n, found.groupdict()
        return None

    def _other_values(self, rule: Rule, values: dict[str, str]) -> dict[str, str]:
        if isinstance(rule, Rename) and rule.mirror is not None:
            name, n = rule.mirror
            values = {**values, name: str(n - 1 - int(values[name]))}
        return values

    def target_name(self, key: str, side: Side) -> list[str]:
        """The name(s) `key` (on `side`) has on the other side; [] if dropped; raises if no rule matches."""
        found = self.match(key, side)
        if found is None:
            raise KeyError(key)
        rule, _, values = found
        values = self._other_values(rule, values)
        if isinstance(rule, SatOnly):
            return []
        if isinstance(rule, Split) and side is Side.sat:
            return [_fill(t, values) for t in rule.diffusers]
        return [_fill(rule.templates(side.other)[0], values)]

    def plan(
        self,
        source: TensorSource,
        side: Side,
        dtype: torch.dtype | None = None,
        rebuild: Callable[[str], tuple[torch.Tensor, str]] | None = None,
        rebuild_keys: list[str] = (),
    ) -> tuple[list[TensorTarget], MappingReport]:
        """Targets on the other side for every tensor of `source` (named on `side`), cast to `dtype` if given.

        `rebuild_keys` (SAT names, import only): tensors diffusers does not hold, made by `rebuild(key)` ->
        (tensor, why). Split pieces must all be present to merge; a missing piece is reported as unmapped.
        """
        report = MappingReport()
        targets: list[TensorTarget] = []
        merges: dict[str, tuple[Split, dict[str, str], dict[int, str]]] = {}
        for key in source.keys():
            found = self.match(key, side)
            if found is None:
                report.unmapped.append(key)
                continue
            rule, n, values = found
            info = source.infos[key]
            if isinstance(rule, SatOnly):
                report.dropped.append((key, rule.why))
            elif isinstance(rule, Rename):
                name = _fill(rule.templates(side.other)[0], self._other_values(rule, values))
                targets.append(self._copy(source, key, name, info, dtype))
            elif side is Side.sat:  # Split: one fused SAT tensor -> its diffusers pieces
                targets.extend(self._split(source, key, rule, values, info, dtype))
            else:  # Split seen from diffusers: collect the pieces, merge below
                sat_name = _fill(rule.sat, values)
                merges.setdefault(sat_name, (rule, values, {}))[2][n] = key
        for sat_name, (rule, _, pieces) in merges.items():
            if len(pieces) != len(rule.diffusers):
                report.unmapped.extend(pieces.values())
                continue
            targets.append(self._merge(source, sat_name, rule, [pieces[n] for n in range(len(rule.diffusers))], dtype))
        for key in rebuild_keys:
            tensor, why = rebuild(key)
            t = tensor if dtype is None else tensor.to(dtype)
            targets.append(TensorTarget.from_tensor(key, t))
            report.rebuilt.append((key, why))
        report.mapped = len(targets)
        return targets, report

    @staticmethod
    def _copy(source: TensorSource, key: str, name: str, info: TensorInfo, dtype) -> TensorTarget:
        return TensorTarget(name, info.shape, dtype or info.dtype, lambda: source.load(key))

    @staticmethod
    def _split(source, key, rule: Split, values, info: TensorInfo, dtype) -> list[TensorTarget]:
        rows = info.shape[0] if info.shape else 0
        if rows % rule.chunks:
            raise CogvidError(f"{key} has shape {list(info.shape)}: its {rows} rows do not split into {rule.chunks}")
        piece = rows // rule.chunks
        cache: dict[str, torch.Tensor] = {}

        def build(group: tuple[int, ...], last: bool) -> torch.Tensor:
            fused = cache.get("t")
            if fused is None:
                fused = cache["t"] = source.load(key)
            out = torch.cat([fused[c * piece : (c + 1) * piece] for c in group]).clone()
            if last:
                cache.clear()
            return out

        targets = []
        for n, (template, group) in enumerate(zip(rule.diffusers, rule.groups, strict=True)):
            shape = (piece * len(group), *info.shape[1:])
            last = n == len(rule.diffusers) - 1
            targets.append(
                TensorTarget(_fill(template, values), shape, dtype or info.dtype, lambda g=group, x=last: build(g, x))
            )
        return targets

    @staticmethod
    def _merge(source, sat_name: str, rule: Split, keys: list[str], dtype) -> TensorTarget:
        infos = [source.infos[k] for k in keys]
        sizes = {info.shape[0] // len(g) for info, g in zip(infos, rule.groups, strict=True)}
        tails = {info.shape[1:] for info in infos}
        bad = any(info.shape[0] % len(g) for info, g in zip(infos, rule.groups, strict=True))
        if len(sizes) != 1 or len(tails) != 1 or bad:
            shapes = ", ".join(f"{k} {list(i.shape)}" for k, i in zip(keys, infos, strict=True))
            raise CogvidError(f"cannot merge into {sat_name}: the pieces do not fit together ({shapes})")
        piece = sizes.pop()
        shape = (piece * rule.chunks, *tails.pop())

        def build() -> torch.Tensor:
            chunks: dict[int, torch.Tensor] = {}
            for key, group in zip(keys, rule.groups, strict=True):
                tensor = source.load(key)
                for n, c in enumerate(group):
                    chunks[c] = tensor[n * piece : (n + 1) * piece]
            return torch.cat([chunks[c] for c in range(rule.chunks)])

        return TensorTarget(sat_name, shape, dtype or infos[0].dtype, build)


def expected_shapes(targets: list[TensorTarget]) -> dict[str, TensorInfo]:
    return {t.name: TensorInfo(t.shape, t.dtype) for t in targets}


@dataclass(frozen=True)
class _Shaped:
    shape: tuple[int, ...]


def check_against(
    targets: list[TensorTarget] | Mapping[str, TensorInfo],
    expected: Mapping[str, tuple[int, ...]],
    what: str,
    hint: str,
) -> None:
    """Raise one line naming missing, unexpected and mis-shaped keys when `targets` do not fit `expected`."""
    from cogvid.models.state import describe_key_mismatch

    got = targets if isinstance(targets, Mapping) else expected_shapes(targets)
    problems = describe_key_mismatch(
        {k: _Shaped(tuple(s)) for k, s in expected.items()}, {k: _Shaped(tuple(v.shape)) for k, v in got.items()}
    )
    if problems:
        raise CogvidError(f"{what}: {problems} ({hint})")
