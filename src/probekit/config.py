"""Dataclass configs and their JSON/YAML serialisation.

Every stage's settings are a dataclass; ``to_dict``/``from_dict`` round-trip them, unknown keys are an error
that names the key and the valid ones, and every value is checked against its field's type (``n_people: abc``
names the field and the type wanted; numbers written as strings, e.g. YAML's ``1e-3``, are read as numbers), so
a typo in a YAML file fails before any work starts. ``load_mapping`` reads a YAML/JSON file into a dict with
one-line errors for unreadable, malformed or non-mapping files. All these errors are ``UserError``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from probekit.errors import UserError, UserFileNotFoundError
from probekit.io import atomic_write_text

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass (possibly nested) as a plain dict of JSON-able values."""
    return dataclasses.asdict(cfg)


_NO_VALUE = object()


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
             list: "a list", tuple: "a list", type(None): "null"}  # fmt: skip
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return names.get(origin, str(tp))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return f"a mapping of {tp.__name__} settings"
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _number(value: str) -> float | None:
    try:
        num = float(value.strip())
    except ValueError:
        return None
    return num if num == num and abs(num) != float("inf") else None


def _check(tp: Any, value: Any) -> Any:
    """``value`` as field type ``tp`` wants it, or ``_NO_VALUE`` when it does not fit."""
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in args:  # exact matches first (an int stays an int in `int | None`), then coercions
            if arg is type(None) and value is None:
                return None
        for arg in args:
            if arg is not type(None):
                out = _check(arg, value)
                if out is not _NO_VALUE:
                    return out
        return _NO_VALUE
    if tp is type(None):
        return None if value is None else _NO_VALUE
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_dict(tp, value) if isinstance(value, dict) else _NO_VALUE
    if tp is bool:
        return value if isinstance(value, bool) else _NO_VALUE
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            num = _number(value)
            return int(num) if num is not None and num.is_integer() else _NO_VALUE
        return _NO_VALUE
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value if value == value and abs(value) != float("inf") else _NO_VALUE
        if isinstance(value, str):
            num = _number(value)
            return num if num is not None else _NO_VALUE
        return _NO_VALUE
    if tp is str:
        return value if isinstance(value, str) else _NO_VALUE
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return _NO_VALUE
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis) and len(args) != len(value):
            return _NO_VALUE
        if args:
            elem = [args[0] if (len(args) == 2 and args[1] is Ellipsis) or origin is list else args[i]
                    for i in range(len(value))]  # fmt: skip
            items = [_check(t, v) for t, v in zip(elem, value)]
            if any(v is _NO_VALUE for v in items):
                return _NO_VALUE
        else:
            items = list(value)
        return tuple(items) if origin is tuple or tp is tuple else list(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            return _NO_VALUE
        if len(args) == 2:
            out = {}
            for k, v in value.items():
                kk, vv = _check(args[0], k), _check(args[1], v)
                if kk is _NO_VALUE or vv is _NO_VALUE:
                    return _NO_VALUE
                out[kk] = vv
            return out
        return value
    return value  # other annotations (Literal, classes): left to the dataclass's own checks


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and values of the wrong type raise ``UserError``
    naming the field (and the valid keys)."""
    if not isinstance(data, dict):
        raise UserError(f"{cls.__name__}: expected a mapping of settings, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise UserError(f"{cls.__name__}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    required = [n for n, f in fields.items() if f.init and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]  # fmt: skip
    missing = [n for n in required if n not in data]
    if missing:
        raise UserError(f"{cls.__name__}: missing required key(s) {missing}; add them to the config")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in data.items():
        tp = hints.get(k, Any)
        out = _check(tp, v)
        if out is _NO_VALUE:
            raise UserError(f"{cls.__name__}.{k} must be {_type_name(tp)}, got {v!r}; fix that setting")
        kwargs[k] = out
    return cls(**kwargs)


def load_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``, or any other suffix) or JSON (``.json``) file's top-level mapping.

    A missing, unreadable, non-UTF-8, malformed or non-mapping file is a one-line ``UserError`` naming it.
    """
    path = Path(path)
    if not path.exists():
        raise UserFileNotFoundError(f"{what} file {path} does not exist")
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give the YAML/JSON file itself")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read ({e.strerror}); check the path and its permissions") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                        "fix the syntax") from None  # fmt: skip
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{what} {path} is not valid YAML ({where}{problem}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must be a mapping of settings (key: value lines), got {type(data).__name__}")
    return data


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a dataclass config as JSON (``.json``) or YAML (``.yaml``/``.yml``), atomically."""
    path = Path(path)
    d = to_dict(cfg)
    if path.suffix in (".yaml", ".yml"):
        atomic_write_text(path, yaml.safe_dump(d, sort_keys=False))
    else:
        atomic_write_text(path, json.dumps(d, indent=2) + "\n")


def load_config(cls: type[T], path: str | Path) -> T:
    """Read a dataclass config from JSON or YAML."""
    return from_dict(cls, load_mapping(path, "config"))
