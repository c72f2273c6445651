"""Dataclass configs and their JSON/YAML serialisation.

Every stage's settings are a dataclass; ``to_dict``/``from_dict`` round-trip them, unknown keys are an error
that names the key and the valid ones, so a typo in a YAML file fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from probekit.io import atomic_write_text

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass (possibly nested) as a plain dict of JSON-able values."""
    return dataclasses.asdict(cfg)


def _coerce(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value)
    if origin in (tuple,) and isinstance(value, list):
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return from_dict(arg, value)
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ``ValueError`` listing the valid ones."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(hints.get(k, Any), v) for k, v in data.items()}
    return cls(**kwargs)


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
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    return from_dict(cls, data or {})
