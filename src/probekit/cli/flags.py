"""Command-line flags generated from config dataclasses and their field docs.

``add_flags(parser, TrainConfig)`` adds one flag per field: ``batch_size`` becomes ``--batch-size``, the fields of
a nested dataclass or ``Section`` are ``--model.d-model`` and so on, and each flag's help is the field's doc
(``probekit.serde.field_docs``: the comment beside the field), the type it wants and its default. A flag the
command line does not give leaves the setting alone, so ``flags.given(args)`` is the nested mapping of only the
settings given, with values converted and checked by the field's type, ready to lay over a config file's
mapping (``merge``) before ``from_dict`` builds the config. No value is copied by hand from a flag into a config.

Values: a text field takes the text as it is; a true/false field is ``--flag`` / ``--no-flag`` (nested:
``--model.no-flag``); a mapping field (``dict[str, int]``) is given once per key, ``--pool-limit major=20
--pool-limit company=15`` (or as a YAML mapping, ``--pool-limit '{major: 20}'``); a list field
takes comma-separated items (``--hooks resid,attn_out``) or a YAML list (``none`` or ``''``: empty); every
other field takes a YAML value (``--betas '[0.9, 0.95]'``, ``--objective-settings '{mask_ratio: 0.2}'``,
``null`` for None). A value of the wrong type is a one-line ``UserError`` naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from probekit.errors import UserError
from probekit.serde import _NO_VALUE, _check, _section_schema, _type_name, field_docs

DEST_PREFIX = "cfg:"


@dataclass(frozen=True)
class Flag:
    path: tuple[str, ...]  # the field's path from the config's top (("model", "d_model"))
    tp: Any  # the field's type
    option: str  # the first option string, for error messages
    doc: str = ""  # the field's doc (its help text)
    also: tuple[tuple[str, ...], ...] = ()  # further fields the flag sets to the same value (``together``)


@dataclass
class Flags:
    """The flags ``add_flags`` made, by argparse destination."""

    schema: type
    flags: dict[str, Flag] = field(default_factory=dict)

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        """The settings given on the command line as a nested mapping, each value checked by its field's type."""
        out: dict[str, Any] = {}
        for dest, flag in self.flags.items():
            if not hasattr(args, dest):
                continue
            value = parse_value(flag, getattr(args, dest))
            for path in (flag.path, *flag.also):
                node = out
                for key in path[:-1]:
                    node = node.setdefault(key, {})
                node[path[-1]] = value
        return out

    def options(self) -> dict[str, str]:
        """Dotted field path -> its flag (e.g. ``{"model.d_model": "--model.d-model"}``; a field's own flag
        before a ``together`` flag that also sets it)."""
        out: dict[str, str] = {}
        for f in self.flags.values():
            for path in (f.path, *f.also):
                out.setdefault(".".join(path), f.option)
        return out


def option_name(path: Sequence[str]) -> str:
    return "--" + ".".join(p.replace("_", "-") for p in path)


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    schema: type,
    *,
    names: Mapping[str, str | Sequence[str]] | None = None,
    negatives: Mapping[str, str] | None = None,
    exclude: Collection[str] = (),
    choices: Mapping[str, Sequence[str] | LazyChoices] | None = None,
    defaults: Any = None,
    prefix: Sequence[str] = (),
    together: Mapping[str, Sequence[str]] | None = None,
) -> Flags:
    """One flag per field of dataclass ``schema`` (recursing into nested dataclasses and sections).

    ``names``: dotted field path -> the option string(s) to use instead of the generated one (a command's
    established spelling, e.g. ``{"max_steps": ("--steps", "--max-steps")}``). ``negatives``: dotted path of a
    true/false field -> an extra option that sets it false (``{"require_correct": "--all-pairs"}``). ``exclude``:
    dotted paths (and everything under them) that get no flag. ``choices``: dotted path -> the values a flag
    accepts (checked by argparse; else a field's ``metadata["choices"]``). ``defaults``: an instance whose
    values the help shows as defaults (default: the fields' own). ``prefix``: the path of ``schema`` inside the
    config. ``together``: an extra option -> the dotted paths it sets to one value, typed, documented and
    defaulted by the first (``{"--warmup-steps": ("finetune.warmup_steps", "rewrite_finetune.warmup_steps")}``);
    given with a flag of one of those fields, it wins.
    """
    flags = Flags(schema)
    rules = _Rules(dict(names or {}), dict(negatives or {}), set(exclude), dict(choices or {}))
    _add(parser, schema, tuple(prefix), flags, rules, defaults)
    for option, dotted in (together or {}).items():
        paths = [tuple(d.split(".")) for d in dotted]
        f, tp, doc, default = _lookup(schema, paths[0][len(prefix) :], defaults)
        shown = " and ".join(dotted)
        dest = DEST_PREFIX + "+" + option
        _add_leaf(parser, [option], dest, f, tp, f"{doc}; sets {shown}", default, rules, ".".join(paths[0]))
        flags.flags[dest] = Flag(paths[0], tp, option, doc, tuple(paths[1:]))
    return flags


@dataclass
class _Rules:
    names: dict[str, Any]
    negatives: dict[str, str]
    exclude: set[str]
    choices: dict[str, Sequence[str] | LazyChoices]


def _add(parser: Any, schema: type, prefix: tuple[str, ...], flags: Flags, rules: _Rules, defaults: Any) -> None:
    hints = typing.get_type_hints(schema)
    docs = field_docs(schema)
    for f in dataclasses.fields(schema):
        if not f.init:
            continue
        path = (*prefix, f.name)
        dotted = ".".join(path)
        if dotted in rules.exclude:
            continue
        tp = hints.get(f.name, Any)
        default = _default(f, defaults)
        nested = _section_schema(tp) or _dataclass_of(tp)
        if nested is not None:
            inner = default if dataclasses.is_dataclass(default) else None
            _add(parser, nested, path, flags, rules, inner)
            continue
        given = rules.names.get(dotted, option_name(path))
        options = [given] if isinstance(given, str) else list(given)
        dest = DEST_PREFIX + dotted
        _add_leaf(parser, options, dest, f, tp, docs.get(f.name, ""), default, rules, dotted)
        flags.flags[dest] = Flag(path, tp, options[0], docs.get(f.name, ""))


def _add_leaf(parser: Any, options: list[str], dest: str, f: dataclasses.Field[Any], tp: Any, doc: str,
              default: Any, rules: _Rules, dotted: str) -> None:  # fmt: skip
    """The argparse option(s) of one field: ``--x`` (and its ``--no-x``) for a true/false field, else ``--x V``."""
    doc = (doc or f.name.replace("_", " ")).replace("%", "%%")
    if tp is bool:
        off = [_negative(o) for o in options] + ([rules.negatives[dotted]] if dotted in rules.negatives else [])
        shown = "" if default is dataclasses.MISSING else f"default: {_show(default)}; "
        parser.add_argument(*options, dest=dest, action="store_true", default=argparse.SUPPRESS,
                            help=f"{doc} ({shown}off: {' or '.join(off)})")  # fmt: skip
        parser.add_argument(*off, dest=dest, action="store_false", default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)  # fmt: skip
        return
    if _is_mapping(tp):
        value_type = _value_type(tp)
        shown = "no default" if default is dataclasses.MISSING else f"default: {_show(default)}"
        parser.add_argument(*options, dest=dest, default=argparse.SUPPRESS, action="append", metavar="KEY=VALUE",
                            help=f"{doc} (KEY={_type_name(value_type).split()[-1].upper()}, once per key; "
                                 f"{shown})")  # fmt: skip
        return
    what = "a value or a list" if _bare(tp) is Any else _type_name(tp)
    what += ", comma-separated" if _is_sequence(tp) else ""
    shown = "no default" if default is dataclasses.MISSING else f"default: {_show(default)}"
    choices = rules.choices.get(dotted) or f.metadata.get("choices")
    if isinstance(choices, LazyChoices):  # checked by its own type function, not argparse's choices
        parser.add_argument(*options, dest=dest, default=argparse.SUPPRESS, type=choices,
                            metavar=choices.metavar, help=f"{doc} ({what}; {shown})")  # fmt: skip
    else:
        parser.add_argument(*options, dest=dest, default=argparse.SUPPRESS, choices=choices,
                            metavar=_metavar(f.name, choices), help=f"{doc} ({what}; {shown})")  # fmt: skip


def _lookup(schema: type, path: Sequence[str], defaults: Any) -> tuple[dataclasses.Field[Any], Any, str, Any]:
    """The field at ``path`` under ``schema`` (through nested dataclasses and sections): (field, type, doc,
    default)."""
    for i, name in enumerate(path):
        fields = {f.name: f for f in dataclasses.fields(schema)}
        if name not in fields:
            raise KeyError(f"{schema.__name__} has no field {name!r} (path {'.'.join(path)!r})")
        f, tp = fields[name], typing.get_type_hints(schema).get(name, Any)
        default, doc = _default(f, defaults), field_docs(schema).get(name, "")
        if i == len(path) - 1:
            return f, tp, doc, default
        nested = _section_schema(tp) or _dataclass_of(tp)
        if nested is None:
            raise KeyError(f"{schema.__name__}.{name} is not a group of settings (path {'.'.join(path)!r})")
        schema, defaults = nested, default if dataclasses.is_dataclass(default) else None
    raise KeyError("an empty path names no field")


def _negative(option: str) -> str:
    """``--x`` -> ``--no-x``; ``--model.x`` -> ``--model.no-x``."""
    head, dot, last = option[2:].rpartition(".")
    return "--" + head + dot + "no-" + last


def _default(f: dataclasses.Field[Any], defaults: Any) -> Any:
    if defaults is not None and hasattr(defaults, f.name):
        return getattr(defaults, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) if value else "none"
    if isinstance(value, str):
        return repr(value) if value == "" or "," in value else value
    return str(value).replace("%", "%%")


def _metavar(name: str, choices: Any) -> str:
    return "{" + ",".join(choices) + "}" if choices else name.upper()


class LazyChoices:
    """A flag's valid values, computed only when a value is given, not when the parser is built or ``--help`` is
    printed: e.g. the objective registry, whose import pulls in torch. ``add_flags`` makes it the flag's argparse
    ``type`` (a call checks a value and returns it; argparse's own ``choices`` would list them in every help
    text), and ``metavar`` stands in for the list in the help."""

    def __init__(self, load: Callable[[], Sequence[str]], metavar: str) -> None:
        self._load, self.metavar = load, metavar

    def __call__(self, value: str) -> str:
        valid = tuple(self._load())
        if value not in valid:
            raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(map(repr, valid))})")
        return value


def _objective_names() -> tuple[str, ...]:
    from probekit.objectives import objective_names  # imports torch: only when a value is checked

    return objective_names()


def objective_choices() -> LazyChoices:
    """The objective registry's names (``--objective``), loaded only when a value is checked."""
    return LazyChoices(_objective_names, "OBJECTIVE")


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass of ``tp`` or of ``tp | None``, else None."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a) and isinstance(a, type)]
        return found[0] if len(found) == 1 else None
    return None


def _optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _bare(tp: Any) -> Any:
    """``tp`` without ``| None``."""
    if _optional(tp):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _is_mapping(tp: Any) -> bool:
    bare = _bare(tp)
    return typing.get_origin(bare) is dict or bare is dict


def _value_type(tp: Any) -> Any:
    """The value type of a mapping field's type (``dict[str, int]``: ``int``; a bare ``dict``: ``Any``)."""
    args = typing.get_args(_bare(tp))
    return args[1] if len(args) == 2 else Any


def _parse_mapping(flag: Flag, items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items (or YAML mappings) of a mapping flag, each value checked by the mapping's value type."""
    import yaml

    value_type = _value_type(flag.tp)
    out: dict[str, Any] = {}
    for item in items:
        text = str(item)
        if text.lstrip().startswith("{"):
            try:
                given = yaml.safe_load(text)
            except yaml.YAMLError:
                given = None
            if not isinstance(given, dict):
                raise UserError(f"{flag.option} {text!r} is not a valid mapping; write KEY=VALUE or '{{key: value}}'")
            pairs = [(str(k), v) for k, v in given.items()]
        else:
            key, sep, raw = text.partition("=")
            if not sep or not key.strip() or not raw.strip():
                raise UserError(f"{flag.option} {text!r} must look like KEY=VALUE")
            pairs = [(key.strip(), raw if value_type is str else _yaml_scalar(raw, flag))]
        for key, value in pairs:
            checked = _check(value_type, value)
            if checked is _NO_VALUE:
                kind = "a whole number" if value_type is int else _type_name(value_type)
                raise UserError(f"{flag.option} {key}={value}: the value must be {kind}, e.g. {key}=20")
            out[key] = checked
    return out


def _is_sequence(tp: Any) -> bool:
    bare = _bare(tp)
    return typing.get_origin(bare) in (list, tuple) or bare in (list, tuple)


def parse_value(flag: Flag, raw: Any) -> Any:
    """A flag's text as its field's value (converted as ``from_dict`` converts config values)."""
    import yaml

    if isinstance(raw, bool):
        return raw
    if _is_mapping(flag.tp) and isinstance(raw, list):
        return _parse_mapping(flag, raw)
    tp, bare, text = flag.tp, _bare(flag.tp), str(raw)
    if _optional(tp) and text.strip().lower() in ("null", "none", "~"):
        return None
    if bare is str:
        return text
    listed = _is_sequence(tp) or (bare is Any and "," in text)  # 'all' or a list: a bare a,b is a list
    if listed and not text.lstrip().startswith(("[", "{")):
        parts = [p.strip() for p in text.split(",")] if text.strip().lower() not in ("", "none") else []
        value: Any = [_yaml_scalar(p, flag) for p in parts]
    else:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UserError(f"{flag.option} {text!r} is not a valid value; quote text, or write YAML such as "
                            "'[1, 2]'") from None  # fmt: skip
    out = _check(tp, value)
    if out is _NO_VALUE:
        raise UserError(f"{flag.option} {text!r}: the setting must be {_type_name(tp)}; fix the value")
    return out


def _yaml_scalar(text: str, flag: Flag) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserError(f"{flag.option}: item {text!r} is not a valid value") from None


def merge(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with ``overrides`` laid over it; nested mappings (sections) are merged key by key."""
    out = dict(data)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


__all__ = ["Flag", "Flags", "add_flags", "merge", "option_name", "parse_value"]
