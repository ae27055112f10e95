"""Command options and YAML configuration files, both from a settings dataclass.

Every command's settings are a dataclass (``LabelConfig``, ``TrainConfig``,
...). :class:`CommandSettings` turns one into the command's options, so a
setting is a ``--flag`` and a ``--config`` YAML key by construction and the
two lists can never drift apart; the flags typed override the file, which
overrides the dataclass defaults.


A command describes its settings as a dataclass (``LabelConfig``, a trainer's
``TrainConfig``); :func:`load_config` reads a YAML mapping and checks it
against that dataclass's fields before any work starts, so a typo
(``max_sied``) or a wrong type (``max_side: big``) stops the run with the
key's name, the file and a suggestion instead of being silently ignored or
failing an hour later. :func:`apply_config` merges defaults < file < flags
the user typed, which is the precedence users expect from a CLI.

Supported field types: ``str``, ``int``, ``float`` (an int is accepted),
``bool`` (only true/false, never 0/1 or "yes" strings), ``Path``, optional
(``X | None``), ``Literal[...]``, ``list[X]`` / ``tuple[X, ...]``,
``dict`` and nested dataclasses (a mapping, validated recursively; errors
name the dotted key, ``optim.lr``).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml

from zsplg.data.errors import InputError, read_text_input

T = TypeVar("T")

__all__ = ["CommandSettings", "apply_config", "config_fields", "load_config", "merge_settings",
           "validate_config"]


class _WrongTypeError(Exception):
    """Internal: a value does not fit its field's type (message says expected/got)."""


def config_fields(schema: type) -> dict[str, Any]:
    """Field name -> resolved type annotation of a dataclass (strings resolved)."""
    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"{schema!r} is not a dataclass")
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema) if f.init}


def _describe(tp: Any) -> str:
    """A short human name for a type annotation: 'int', 'float or null', 'list of str'."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, set, frozenset, Collection):
        return f"list of {_describe(args[0])}" if args else "list"
    if origin is dict or tp is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    if tp is Path:
        return "path (str)"
    return getattr(tp, "__name__", str(tp))


def _got(value: Any) -> str:
    name = {type(None): "null", bool: "bool", int: "int", float: "float", str: "str",
            list: "list", dict: "mapping"}.get(type(value), type(value).__name__)
    shown = repr(value)
    return f"{name} {shown if len(shown) <= 40 else shown[:37] + '...'}"


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """``value`` checked against ``tp`` and converted (list -> tuple, str -> Path, int -> float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _WrongTypeError
    if origin in (typing.Union, types.UnionType):
        for option in sorted(args, key=lambda a: a is str):  # try str last: "1" stays str
            try:
                return _convert(value, option, key, source)
            except _WrongTypeError:
                continue
        raise _WrongTypeError
    if origin is typing.Literal:
        if value in args and not (isinstance(value, bool) and True not in args):
            return value
        raise _WrongTypeError
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _WrongTypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _WrongTypeError
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _WrongTypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise _WrongTypeError
    if tp is Path:
        if isinstance(value, str) and value:
            return Path(value)
        raise _WrongTypeError
    if origin in (list, tuple, set, frozenset, Collection):
        if not isinstance(value, list | tuple):
            raise _WrongTypeError
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _WrongTypeError
            return tuple(_convert(v, a, key, source) for v, a in zip(value, args, strict=True))
        item = args[0] if args else Any
        items = [_convert(v, item, key, source) for v in value]
        if origin is tuple:
            return tuple(items)
        return origin(items) if origin in (set, frozenset) else items
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
        raise _WrongTypeError
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise _WrongTypeError
        return tp(**validate_config(value, tp, source, prefix=f"{key}."))
    return value  # an annotation this module does not know: accepted as given


def validate_config(
    data: Mapping[str, Any],
    schema: type,
    source: str | PathLike[str],
    *,
    aliases: Mapping[str, str] | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """Check a mapping's keys and value types against ``schema``'s fields.

    Returns {field name: converted value} for the keys present (defaults are
    not filled in: that is :func:`apply_config`'s job, so flags can still
    override). ``aliases`` maps alternative spellings (a CLI flag's name, say
    ``threshold``) to field names; dashes are read as underscores.
    Raises InputError naming ``source`` and the key: unknown keys (with the
    closest known key as a suggestion), wrong types (expected and got), a
    key given twice under two spellings.
    """
    fields = config_fields(schema)
    aliases = dict(aliases or {})
    known = sorted(set(fields) | set(aliases))
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for raw_key, value in data.items():
        if not isinstance(raw_key, str):
            raise InputError(source, f"key {raw_key!r} is not a string")
        key = raw_key.replace("-", "_")
        name = aliases.get(key, key)
        if name not in fields:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise InputError(
                source,
                f"unknown key '{prefix}{raw_key}'{hint} (known keys: {', '.join(known)})",
            )
        if name in spelled:
            raise InputError(
                source, f"'{prefix}{raw_key}' and '{prefix}{spelled[name]}' set the same setting"
            )
        spelled[name] = raw_key
        try:
            out[name] = _convert(value, fields[name], f"{prefix}{name}", str(source))
        except _WrongTypeError:
            raise InputError(
                source,
                f"key '{prefix}{raw_key}': expected {_describe(fields[name])}, "
                f"got {_got(value)}",
            ) from None
    return out


def load_config(
    path: str | PathLike[str],
    schema: type,
    *,
    aliases: Mapping[str, str] | None = None,
    path_keys: Collection[str] = (),
) -> dict[str, Any]:
    """Read a YAML (or JSON) config file and validate it against ``schema``.

    ``path_keys``: fields holding file paths; a relative path in the file is
    read relative to the config file's folder (like a pair-list's entries), so
    a config keeps working from any working directory. Returns the validated
    {field: value} mapping; an empty file is an empty mapping.
    """
    p = Path(path)
    text = read_text_input(p, "config")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        detail = problem or " ".join(str(exc).split())
        raise InputError(p, f"invalid YAML{where}: {detail}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(p, f"expected a mapping of settings at the top level, got {_got(data)}")
    values = validate_config(data, schema, p, aliases=aliases)
    base = Path(os.path.abspath(p.parent))
    for key in path_keys:
        value = values.get(key)
        if isinstance(value, str | Path) and not Path(value).is_absolute():
            resolved = Path(os.path.normpath(base / Path(value).expanduser()))
            values[key] = resolved if isinstance(value, Path) else str(resolved)
    return values


def apply_config(
    schema: type[T],
    file_values: Mapping[str, Any] | None = None,
    explicit: Mapping[str, Any] | None = None,
    source: str | PathLike[str] = "configuration",
) -> T:
    """Build ``schema`` from defaults < ``file_values`` < ``explicit`` (the flags typed).

    A required field missing from both raises InputError naming ``source`` and the key.
    """
    merged = {**(file_values or {}), **(explicit or {})}
    missing = [f.name for f in dataclasses.fields(schema)  # type: ignore[arg-type]
               if f.init and f.name not in merged
               and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise InputError(source, f"missing required setting(s): {', '.join(missing)}")
    return schema(**merged)


def merge_settings(
    flag_values: Mapping[str, Any],
    typed: Collection[str],
    file_values: Mapping[str, Any],
) -> dict[str, Any]:
    """A CLI's settings: the flags the user typed > the config file > the flags' defaults.

    ``flag_values``: every flag's value keyed by field name (defaults included);
    ``typed``: the field names whose flags were given on the command line.
    """
    merged = dict(flag_values)
    merged.update({k: v for k, v in file_values.items() if k not in typed})
    return merged


def _option_type(annotation: Any) -> Any:
    """A field's type as an optional CLI type (None = the flag was not given)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) in (list, tuple):
        return str | None  # typed as one comma-separated value: 0.5,0.7,0.9
    return annotation | None


def _list_item(annotation: Any) -> Any:
    """The item type of a list or tuple field (optional or not), else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) in (list, tuple):
            return typing.get_args(candidate)[0]
    return None


def _shown_default(value: Any) -> str | bool:
    if value is None or value is dataclasses.MISSING:
        return False
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value) or False
    return str(value)


@dataclass(frozen=True)
class CommandSettings:
    """How a settings dataclass appears on the command line.

    Every option defaults to None, meaning "not typed", so a value typed
    equal to the default still overrides the config file.
    """

    schema: type
    help: Mapping[str, str]
    flags: Mapping[str, str] = field(default_factory=dict)  # field -> flag name, where they differ
    arguments: tuple[str, ...] = ()  # fields given positionally
    hidden: frozenset[str] = frozenset()  # settings only a --config file sets
    path_keys: tuple[str, ...] = ()  # relative paths in a --config file start at its folder
    exclusive: tuple[tuple[str, ...], ...] = ()  # typing one replaces the file's others
    config_option: bool = True

    def flag(self, name: str) -> str:
        return "--" + self.flags.get(name, name).replace("_", "-")

    def aliases(self) -> dict[str, str]:
        """Flag spellings a --config file may use besides the field names."""
        return {flag.replace("-", "_"): name for name, flag in self.flags.items()}

    def signature(self) -> inspect.Signature:
        """The typer signature: ``--config`` first, then one parameter per field."""
        params = []
        if self.config_option:
            params.append(inspect.Parameter(
                "config_file", inspect.Parameter.KEYWORD_ONLY, default=None,
                annotation=Annotated[Path | None, typer.Option(
                    "--config", help="YAML file of settings, keys named like the options "
                                     "(max_side or max-side); options typed here override it.")]))
        hints = config_fields(self.schema)
        defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else
                             f.default_factory() if f.default_factory is not dataclasses.MISSING
                             else None)
                    for f in dataclasses.fields(self.schema) if f.init}
        for name, hint in hints.items():
            if name in self.hidden:
                continue
            base = _option_type(hint)
            text = self.help.get(name, "")
            if name in self.arguments:
                decl: Any = typer.Argument(help=text, show_default=False, metavar=name.upper())
            else:
                flag = self.flag(name)
                names = (f"{flag}/--no-{flag[2:]}",) if base == (bool | None) else (flag,)
                decl = typer.Option(*names, help=text, show_default=_shown_default(defaults[name]))
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[base, decl]))
        return inspect.Signature(params)

    def resolve(self, config_file: Path | None, typed: Mapping[str, Any]) -> dict[str, Any]:
        """The file's values, overridden by the options typed (those not None)."""
        given = {k: (str(v) if isinstance(v, Path) else v) for k, v in typed.items()
                 if v is not None}
        hints = config_fields(self.schema)
        for key, value in given.items():
            item = _list_item(hints.get(key))
            if item is not None and isinstance(value, str):
                try:
                    given[key] = [item(v) for v in value.split(",") if v.strip()]
                except ValueError:
                    raise ValueError(f"{self.flag(key)}: expected a comma-separated list of "
                                     f"{getattr(item, '__name__', item)}, got {value!r}") from None
        values = (load_config(config_file, self.schema, aliases=self.aliases(),
                              path_keys=self.path_keys) if config_file else {})
        for group in self.exclusive:
            if set(group) & set(given):
                values = {k: v for k, v in values.items() if k not in group}
        for key, value in list(values.items()):
            if isinstance(value, Path):
                values[key] = str(value)
        return merge_settings(given, given.keys(), values)

    def option_name(self, name: str) -> str:
        """How the user names a setting: ``IMAGES_DIR`` for an argument, else its flag."""
        return name.upper() if name in self.arguments else self.flag(name)

    def missing(self, values: Mapping[str, Any]) -> list[str]:
        """Required settings neither typed nor in the file, as the user would name them."""
        required = [f.name for f in dataclasses.fields(self.schema)
                    if f.init and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        return [name for name in required if values.get(name) is None]
