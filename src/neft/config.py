"""One dataclass per command: its fields are the CLI flags and the YAML keys.

Flags follow Trainer/TRL names (``--learning_rate``), ``--config file.yaml`` gives any
of them, and flags given on the command line win. Unknown YAML keys are an error:
a typo must not be silently ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import yaml

from .errors import NeftError

T = TypeVar("T")


def option(help_text: str, default: Any = None) -> Any:
    """A config field: its default and the --help text of its flag."""
    return dataclasses.field(default=default, metadata={"help": help_text})


def _resolve(annotation: Any) -> Any:
    if isinstance(annotation, str):
        return eval(annotation, {"typing": typing})  # field annotations are simple
    return annotation


def _allows_none(annotation: Any) -> bool:
    return type(None) in typing.get_args(_resolve(annotation))


def _base_type(annotation: Any) -> type:
    """``int | None`` -> int; ``str`` -> str."""
    annotation = _resolve(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    return annotation


def parse_bool(text: str) -> bool:
    """argparse type for a yes/no flag written as in the dataclass options: true / false."""
    value = text.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def finite_float(text: str) -> float:
    """argparse type for a float flag: 'nan' and 'inf' parse as floats, but no option of
    neft means anything with them (a NaN percent compares false with every bound)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def parse_options(text: str) -> dict[str, Any]:
    """'steps=40,learning_rate=1e-4' -> {'steps': 40, 'learning_rate': 0.0001}: the values
    read as YAML scalars (numbers, true/false, text)."""
    options: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"{text!r}: write key=value pairs, e.g. "
                                             "steps=40,learning_rate=1e-4")
        options[key.strip()] = _scalar(value.strip())
    return options


def _scalar(text: str) -> Any:
    """A number (1e-4 too, which YAML 1.1 reads as text), true/false, or the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (bool, str)) or value is None else text


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """A ``--name`` flag per field, default None so that YAML values are not overridden."""
    parser.add_argument("--config", help="YAML file with any of these options")
    groups = {}  # fields a dataclass base declares (e.g. DataOptions) get its own group
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            title = (base.__doc__ or base.__name__).strip().splitlines()[0]
            group = parser.add_argument_group(title.rstrip("."))
            groups.update({f.name: group for f in dataclasses.fields(base)})
    own = [f for f in dataclasses.fields(cls) if f.name not in groups]
    shared = [f for f in dataclasses.fields(cls) if f.name in groups]
    for field in own + shared:
        target = groups.get(field.name, parser)
        kind = _base_type(field.type)
        help_text = field.metadata.get("help", "").replace("%", "%%")  # argparse formats it
        default = field.default if field.default is not dataclasses.MISSING else None
        flag = f"--{field.name}"
        if kind is bool:
            target.add_argument(flag, type=parse_bool, nargs="?", const=True, default=None,
                                help=f"{help_text} (default: {default})")
        else:
            types_ = {int: int, float: finite_float, dict: parse_options}
            target.add_argument(flag, type=types_.get(kind, str), default=None,
                                help=f"{help_text} (default: {default})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice: YAML keeps the last silently, so a
    second `learning_rate:` further down would win unnoticed."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise NeftError(f"{self.name}:{line}: option {key!r} is given twice (first on "
                                f"line {seen[key]}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    if os.path.isdir(path):
        raise NeftError(f"config file {path} is a folder; pass the YAML file itself")
    if not os.path.isfile(path):
        raise NeftError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8-sig") as handle:
            loader = _UniqueKeyLoader(handle)
            loader.name = os.fspath(path)
            try:
                data = loader.get_single_data() or {}
            finally:
                loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise NeftError(f"{where}: not valid YAML ({problem}); fix that line") from exc
    except UnicodeDecodeError as exc:
        raise NeftError(f"{path}: not UTF-8 text ({exc.reason}); re-encode it as UTF-8") from None
    if not isinstance(data, dict):
        raise NeftError(f"{path} must hold a mapping of option: value")
    return data


def check_keys(cls: type, data: dict[str, Any], where: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(names)}"
            raise NeftError(f"{where}: unknown option {key!r}{hint}")


def given_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The options a user set: YAML (``--config``) first, then every flag given on the
    command line (the rest keep their defaults)."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values = load_yaml(args.config)
        check_keys(cls, values, args.config)
    for field in dataclasses.fields(cls):
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = given
    return values


def refuse_ignored(given: Iterable[str], ignored: Mapping[str, str]) -> None:
    """One line for the first option in ``given`` that the run would not read (``ignored``:
    name -> why); a flag meant for another setting is a mistake, not a no-op."""
    for name in given:
        if name in ignored:
            raise NeftError(f"--{name} is not used here ({ignored[name]}): drop it")


def build_config(cls: type[T], args: argparse.Namespace) -> T:
    return from_dict(cls, given_values(cls, args))


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    check_keys(cls, values, cls.__name__)
    converted = {}
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value = values[field.name]
        if value is None and not _allows_none(field.type):
            raise NeftError(f"option {field.name} has no value; give one, or drop it for the "
                            f"default ({field.default!r})")
        if value is not None:
            value = _convert(field.name, value, _base_type(field.type))
        converted[field.name] = value
    return cls(**converted)


def _convert(name: str, value: Any, kind: type) -> Any:
    """A YAML value as its field's type. Strict, because a quoted 'false' is truthy text
    (``overwrite: 'false'`` would delete a run) and 2.5 steps must not quietly become 2."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        try:
            return parse_bool(str(value))
        except argparse.ArgumentTypeError:
            raise NeftError(f"option {name} must be true or false, not {value!r}") from None
    if kind in (int, float):
        if isinstance(value, (bool, list, dict)):
            raise NeftError(f"option {name} must be a number, not {value!r}")
        if kind is int and isinstance(value, int):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise NeftError(f"option {name} must be a number, not {value!r}") from None
        if not math.isfinite(number):
            raise NeftError(f"option {name} must be a finite number, not {value!r}")
        if kind is float:
            return number
        if number != int(number):
            raise NeftError(f"option {name} must be a whole number, not {value!r}")
        return int(number)
    if kind is dict:
        if isinstance(value, str):
            try:
                return parse_options(value)
            except argparse.ArgumentTypeError as exc:
                raise NeftError(f"option {name}: {exc}") from None
        if not isinstance(value, dict):
            raise NeftError(f"option {name} must be a mapping of names to values, not "
                            f"{value!r}")
        return dict(value)
    if kind is str and not isinstance(value, str):
        if isinstance(value, bool):  # `bf16: true` in YAML means the text true
            return "true" if value else "false"
        if isinstance(value, (list, dict)):
            raise NeftError(f"option {name} must be text, not a {type(value).__name__} "
                            f"({value!r}); write one value")
        return str(value)
    return value
