"""Type and range checks for config dataclasses, from whatever a user wrote: flags, YAML, TOML, JSON.

Each field's annotation says its type and an optional `Rule` in the class's RULES says its range or
choices. Values are checked, and converted only where the conversion cannot change their meaning:
an int where a float is wanted, and a numeric string for a float (PyYAML reads `1e-3` as a string,
because YAML 1.1 numbers need a dot). Booleans are true or false and nothing else: the string "no" is
refused rather than read as true. Every refusal is one `ConfigError` naming the option, the value and
what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """A range (`lo`/`hi`, open or closed) or a set of choices for one option."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] | None = None

    def allows(self, v: Any) -> bool:
        if self.choices is not None:
            return v in self.choices
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return self.hi is None or not (v > self.hi or (self.hi_open and v == self.hi))

    def __str__(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


def at_least(lo: float) -> Rule:
    return Rule(lo=lo)


def fraction(hi_open: bool = True, lo_open: bool = False) -> Rule:
    return Rule(0.0, 1.0, lo_open=lo_open, hi_open=hi_open)


def _describe(kind: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}.get(
        kind, str(kind))


def convert(what: str, name: str, value: Any, kind: Any) -> Any:
    """`value` as the annotated type `kind`, or a ConfigError naming the option."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return convert(what, name, value, inner[0])
    if origin is tuple:  # tuple[float, float], or tuple[float, ...] of any length from 1
        if args[-1] is Ellipsis:
            if not isinstance(value, list | tuple) or not value:
                raise ConfigError(f"{what} {name!r}: {value!r} is not a list of numbers")
            args = (args[0],) * len(value)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{what} {name!r}: {value!r} is not a list of {len(args)} numbers")
        return tuple(convert(what, name, v, a) for v, a in zip(value, args))
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{what} {name!r}: {value!r} is not a mapping of KEY: VALUE")
        return value
    ok = value
    if kind is bool:
        ok = value if isinstance(value, bool) else None
    elif kind is int:
        ok = value if isinstance(value, int) and not isinstance(value, bool) else None
    elif kind is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        ok = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        if ok is not None and not math.isfinite(ok):
            ok = None
    elif kind is str:
        ok = value if isinstance(value, str) else None
    if ok is None:
        raise ConfigError(f"{what} {name!r}: {value!r} is not {_describe(kind)}")
    return ok


def check_field(what: str, name: str, value: Any, kind: Any, rule: Rule | None) -> Any:
    """One option: converted to its type and checked against its rule."""
    value = convert(what, name, value, kind)
    if rule is not None and value is not None:
        for v in value if isinstance(value, tuple) else (value,):
            if not rule.allows(v):
                raise ConfigError(f"{what} {name!r}: {v!r} is not allowed; allowed: {rule}")
    return value


def check_fields(cls: type, d: dict[str, Any], what: str, rules: dict[str, Rule]) -> dict[str, Any]:
    """Some options of the dataclass `cls` (overrides, say), each checked alone; unknown keys refused."""
    check_known_keys(cls, d, what)
    hints = typing.get_type_hints(cls)
    return {k: check_field(what, k, v, hints[k], rules.get(k)) for k, v in d.items()}


def validate(obj: Any, what: str, rules: dict[str, Rule]) -> None:
    """Check (and convert in place) every field of the dataclass instance `obj`."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        object.__setattr__(obj, f.name, check_field(what, f.name, getattr(obj, f.name), hints[f.name],
                                                    rules.get(f.name)))


def check_known_keys(cls: type, d: dict[str, Any], what: str) -> None:
    """Refuse keys that are not fields of the dataclass `cls`, naming them and the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {what} keys: {unknown}; known: {', '.join(sorted(known))}")
