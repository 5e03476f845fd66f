"""params.yaml, read and checked against the dataclasses of config.py: every stage loads only its
own sections (load_section). Unknown keys, wrong types and out-of-range values become a StudyError
whose message names the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from latentstudy.config import SECTIONS, StudyError


def load_params(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise StudyError(f"{path}: file not found; run from the project root or pass --params") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise StudyError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: top level must be a mapping of sections {sorted(SECTIONS)}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise StudyError(f"{path}: unknown section '{unknown[0]}'; allowed: {', '.join(SECTIONS)}")
    return raw


def load_section(path: str | Path, name: str) -> Any:
    """One validated section of params.yaml; missing sections take the defaults.

    Every section is checked, not only this one: DVC reruns a stage only when its own sections
    change, so a typo elsewhere must still stop whichever stage runs next.
    """
    raw = load_params(path)
    built = {key: build(cls, raw.get(key) or {}, f"{Path(path).name}: {key}") for key, cls in SECTIONS.items()}
    return built[name]


def build(cls: type, raw: Any, where: str, base: Any = None) -> Any:
    """A validated cls from a mapping; keys it leaves out keep base's values (cls's defaults).

    A nested mapping merges onto the enclosing default in the same way: `beta: {high: 8}` keeps
    the section's default beta.low, not LogRange's own.
    """
    if not isinstance(raw, dict):
        raise StudyError(f"{where} = {raw!r}; allowed: a mapping with keys {_keys(cls)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise StudyError(f"{where}.{unknown[0]} is not a known key; allowed: {_keys(cls)}")
    base = cls() if base is None else base
    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            key = f"{where}.{f.name}"
            values[f.name] = _coerce(hints[f.name], raw[f.name], key, values[f.name])
            _check_bounds(f, values[f.name], key)
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(where)
    return obj


def _keys(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + " | ".join(str(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        inner = typing.get_args(tp)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(inner, _describe(inner))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {_keys(tp)}"
    return {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}[tp]


def _coerce(tp: Any, value: Any, key: str, default: Any = None) -> Any:
    origin = typing.get_origin(tp)
    bad = StudyError(f"{key} = {value!r} is not allowed; expected {_describe(tp)}")
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1:  # keep the inner type's own message (a nested key, a list item)
            return _coerce(inner[0], value, key, default)
        for option in inner:
            try:
                return _coerce(option, value, key, default)
            except StudyError:
                continue
        raise bad
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [_coerce(typing.get_args(tp)[0], v, key) for v in value]
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, default)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        # YAML 1.1 reads 3e-4 (no dot) as a string; accept it as the number the user meant.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise bad
        return value
    raise TypeError(f"unsupported config type {tp}")


_OPS = {"gt": (">", lambda v, b: v > b), "ge": (">=", lambda v, b: v >= b),
        "lt": ("<", lambda v, b: v < b), "le": ("<=", lambda v, b: v <= b)}


def _check_bounds(f: dataclasses.Field, value: Any, key: str) -> None:
    bounds = f.metadata.get("bounds", {})
    if value is None or not bounds:
        return
    if not all(_OPS[op][1](value, b) for op, b in bounds.items()):
        allowed = " and ".join(f"{_OPS[op][0]} {b:g}" for op, b in bounds.items())
        raise StudyError(f"{key} = {value!r} is out of range; allowed: {allowed}")


def as_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
