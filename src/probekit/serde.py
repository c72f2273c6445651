"""Dataclass configs and their JSON/YAML serialisation.

Every stage's settings are a dataclass; ``to_dict``/``from_dict`` round-trip them, unknown keys are an error
that names the key and the valid ones, and every value is checked against its field's type (``n_people: abc``
names the field and the type wanted; numbers written as strings, e.g. YAML's ``1e-3``, are read as numbers), so
a typo in a YAML file fails before any work starts. ``load_mapping`` reads a YAML/JSON file into a dict with
one-line errors for unreadable, malformed or non-mapping files. All these errors are ``UserError``.

A nested group of settings that a config gives only in part (a model's ``train`` section, ``TrainConfig.model``,
an experiment's ``probe`` and ``finetune`` sections) is a ``Section[T]``: the keys the config gives, each checked
against the field type of dataclass ``T`` when it is loaded, while the keys it leaves out keep meaning "not set
here" (the defaults, or values that come from elsewhere: a checkpoint, the tokenizer, the caller). A section
serialises to exactly the keys it was given, so records written before a section was typed read the same.
``field_docs(T)`` gives every field's help text (``probekit.cli.flags`` builds the command-line flags from it).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

from probekit.errors import UserError, UserFileNotFoundError
from probekit.io import atomic_write_text

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass (possibly nested) as a plain dict of JSON-able values (as ``dataclasses.asdict``; a
    ``Section`` becomes the dict of the keys it was given)."""
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError("to_dict() should be called on dataclass instances")
    out = _plain(cfg)
    assert isinstance(out, dict)
    return out


def _plain(obj: Any) -> Any:
    """``dataclasses.asdict``'s recursion, with sections as plain dicts."""
    if isinstance(obj, Section):
        return {_plain(k): _plain(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*[_plain(v) for v in obj])
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, dict):
        return type(obj)((_plain(k), _plain(v)) for k, v in obj.items())
    return copy.deepcopy(obj)


class Section(Mapping[str, Any], Generic[T]):
    """Settings of dataclass ``schema`` that a config gives in part: a read-only mapping of the keys given.

    Each key must be a field of ``schema`` and each value fit that field's type (checked when the section is
    made; ``where`` names the section in errors). The values are kept as written (a YAML ``1e-3`` stays the
    string it was read as, as in the record of a run made before sections were typed); ``build`` makes the
    full ``schema`` object from them, converting values as ``from_dict`` does. Cross-field checks (heads
    dividing ``d_model``, a budget...) happen there, where the section is used.
    """

    def __init__(self, schema: type[T], values: Mapping[str, Any] | None = None, where: str | None = None) -> None:
        self.schema = schema
        self._values: dict[str, Any] = _check_section(schema, {} if values is None else values, where)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Section[{self.schema.__name__}]({self._values!r})"

    def to_dict(self) -> dict[str, Any]:
        """The keys given, as a plain dict (nested sections and dataclasses as dicts)."""
        return {k: _plain(v) for k, v in self._values.items()}

    def replace(self, **changes: Any) -> Section[T]:
        """A copy with ``changes`` set (checked like the rest)."""
        return Section(self.schema, {**self._values, **changes})

    def build(self, **base: Any) -> T:
        """The full ``schema`` object: ``base`` (e.g. the values filled in by the caller), then these keys."""
        return from_dict(self.schema, {**base, **self.to_dict()})


def section(schema: type, help: str = "", **metadata: Any) -> Any:
    """A dataclass field holding a ``Section[schema]`` (empty by default), documented by ``help``."""
    return dataclasses.field(default_factory=lambda: Section(schema), metadata={"help": help, **metadata})


def _check_section(schema: type, data: Any, where: str | None) -> dict[str, Any]:
    where = where or schema.__name__
    if isinstance(data, Section):
        data = data.to_dict()
    if not isinstance(data, Mapping):
        raise UserError(f"{where} must be a mapping of {schema.__name__} settings, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(schema)}
    unknown = sorted(set(data) - fields, key=str)
    if unknown:
        raise UserError(f"{where}: unknown {schema.__name__} field(s) {unknown}; valid keys are {sorted(fields)}")
    hints = typing.get_type_hints(schema)
    values = {}
    for k, v in data.items():
        tp = hints.get(k, Any)
        if _section_schema(tp) is not None:
            values[k] = _check_section(_section_schema(tp), v, f"{where}.{k}")  # type: ignore[arg-type]
            continue
        if _check(tp, v) is _NO_VALUE:
            raise UserError(f"{where}.{k} must be {_type_name(tp)}, got {v!r}; fix that setting")
        values[k] = v
    return values


def _section_schema(tp: Any) -> type | None:
    """``T`` of a ``Section[T]`` annotation (also inside ``Section[T] | None``), else None."""
    if typing.get_origin(tp) is Section:
        return typing.cast(type, typing.get_args(tp)[0])
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if typing.get_origin(arg) is Section:
                return typing.cast(type, typing.get_args(arg)[0])
    return None


def init_sections(cfg: Any) -> None:
    """In a dataclass's ``__post_init__``: turn the mappings given to its ``Section`` fields into sections."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        schema = _section_schema(hints.get(f.name))
        value = getattr(cfg, f.name)
        if schema is not None and value is not None and not (isinstance(value, Section) and value.schema is schema):
            setattr(cfg, f.name, Section(schema, value, f"{type(cfg).__name__}.{f.name}"))


def field_docs(cls: type) -> dict[str, str]:
    """Every field's help text: its ``metadata["help"]``, else the comment on its line, else the comment lines
    right above it (``""`` where there is none). Parsed from the class's source, base classes included."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        docs.update(_comment_docs(klass))
    for f in dataclasses.fields(cls):
        if f.metadata.get("help"):
            docs[f.name] = str(f.metadata["help"])
        docs.setdefault(f.name, "")
    return {f.name: docs[f.name] for f in dataclasses.fields(cls)}


def _comment_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if text not in ("fmt: skip", "fmt: off", "fmt: on") and not text.startswith(("noqa", "type:")):
                comments[tok.start[0]] = text.removesuffix("# fmt: skip").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.add(tok.start[0])
    node = ast.parse(source).body[0]
    out = {}
    for stmt in getattr(node, "body", []):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        end = stmt.end_lineno or stmt.lineno
        inline = [comments[n] for n in range(stmt.lineno, end + 1) if n in comments and n in code_lines]
        above: list[str] = []
        line = stmt.lineno - 1
        while line in comments and line not in code_lines:
            above.insert(0, comments[line])
            line -= 1
        text = " ".join(above + inline).strip()
        if text:
            out[stmt.target.id] = text
    return out


_NO_VALUE = object()


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
             list: "a list", tuple: "a list", type(None): "null"}  # fmt: skip
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Section:
        return f"a mapping of {typing.get_args(tp)[0].__name__} settings"
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
    if origin is Section:
        try:
            return Section(args[0], value)
        except UserError:
            return _NO_VALUE
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
        return from_dict(tp, value) if isinstance(value, (dict, Section)) else _NO_VALUE
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


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and values of the wrong type raise ``UserError``
    naming the field (and the valid keys)."""
    if isinstance(data, Section):
        data = data.to_dict()
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
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        tp = hints.get(k, Any)
        schema = _section_schema(tp)
        if schema is not None and not (v is None and _allows_none(tp)):
            kwargs[k] = Section(schema, v, f"{cls.__name__}.{k}")
            continue
        out = _check(tp, v)
        if out is _NO_VALUE:
            raise UserError(f"{cls.__name__}.{k} must be {_type_name(tp)}, got {v!r}; fix that setting")
        kwargs[k] = out
    return cls(**kwargs)


def _allows_none(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


class DuplicateKeyError(ValueError):
    """A mapping in a config file gives the same key twice (YAML and JSON loaders would keep the last)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: merged keys may be overridden below
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(f"key {key!r} is given twice (lines {seen[key]} and {line})")
                seen[key] = line
            except TypeError:  # an unhashable key: the base class reports it
                continue
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise DuplicateKeyError(f"key {k!r} is given twice")
        out[k] = v
    return out


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
        data = json.loads(text, object_pairs_hook=_unique_pairs) if path.suffix == ".json" else _load_yaml(text)
    except DuplicateKeyError as e:
        raise UserError(f"{what} {path}: {e}; keep one of them") from None
    except RecursionError:
        raise UserError(f"{what} {path} is nested too deeply to be a config; flatten it") from None
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


def apply_settings(data: Mapping[str, Any], settings: Sequence[str], what: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` settings over a loaded config mapping, returned as a new mapping (``data`` is left as it was).

    KEY is a dotted path (``probe.max_iter``). Where the path meets a list of named entries, the next part names one
    entry (``models.ntp_single.train.tokens``) or ``*`` every entry (``datasets.*.name_pools``). VALUE is YAML
    (``12``, ``[p, q]``, ``{first: 12, middle: 12, last: 12}``). Sections missing along the path are created; the
    config class then checks the result as it checks a file. Entries that shared one YAML anchor are set apart, so
    a setting on one entry never reaches another.
    """
    out = _unshared(data)
    for item in settings:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or any(not p for p in parts):
            raise UserError(f"{what} {item!r} must look like KEY=VALUE with a dotted KEY, "
                            "e.g. datasets.*.name_pools={first: 12, middle: 12, last: 12}")  # fmt: skip
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UserError(f"{what} {item}: the value is not valid YAML; quote it or fix its syntax") from None
        _set_path(out, parts, value, f"{what} {item}")
    return out


def _unshared(node: Any) -> Any:
    """A copy of a loaded YAML tree in which no two places share an object (YAML aliases load as one object)."""
    if isinstance(node, Mapping):
        return {k: _unshared(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_unshared(v) for v in node]
    return node


def _set_path(node: Any, parts: list[str], value: Any, where: str) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        if not all(isinstance(e, dict) and "name" in e for e in node):
            raise UserError(f"{where}: {head!r} would go inside a list of values, not of named entries; set the "
                            "whole list instead (KEY=[a, b])")  # fmt: skip
        entries = [e for e in node if head == "*" or e.get("name") == head]
        if not entries:
            names = [e["name"] for e in node]
            raise UserError(f"{where}: no entry named {head!r} in that list; its entries are {names} (or * for all)")
        if not rest:
            raise UserError(f"{where}: name a setting inside the entry, e.g. {head}.seed=1")
        for entry in entries:
            _set_path(entry, rest, value, where)
        return
    if not isinstance(node, dict):
        raise UserError(f"{where}: {head!r} would go inside the value {node!r}, which is not a section of settings")
    if not rest:
        node[head] = _unshared(value)  # each entry of a * path gets its own copy
        return
    if node.get(head) is None:
        node[head] = {}
    _set_path(node[head], rest, value, where)


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
