"""Typed construction of frozen dataclasses from parsed YAML, with errors that name the file and the key.

Why not pydantic: the parameter objects are plain dataclasses that notebooks and tests build directly, and the
only validation needed is structural (keys, types, enums, literals), which a short recursive walker does exactly.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from lesionsignal.core.errors import UserError

T = TypeVar("T")


class ParamsError(UserError, ValueError):
    """A parameter file is wrong: the message names the file, the key and the reason."""

    def __init__(self, source: str | Path, key: str, reason: str) -> None:
        self.source = str(source)
        self.key = key
        self.reason = reason
        self.problems: tuple[tuple[str, str], ...] = ((key, reason),)
        super().__init__(f"{source}: {key or '<top level>'}: {reason}")

    @classmethod
    def of(cls, source: str | Path, problems: list[tuple[str, str]]) -> ParamsError:
        """One error for every problem of a file, so a user fixes them all in one pass."""
        if len(problems) == 1:
            return cls(source, *problems[0])
        listed = "\n  ".join(f"{key or '<top level>'}: {reason}" for key, reason in problems)
        error = cls(source, problems[0][0], problems[0][1])
        error.problems = tuple(problems)
        error.args = (f"{source}: {len(problems)} problems:\n  {listed}",)
        return error


class FieldError(ValueError):
    """Raised by a dataclass's ``__post_init__`` about one of its own fields; re-raised with file and full key."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def build(cls: type[T], data: Any, *, source: str | Path, key: str = "") -> T:
    """Build dataclass ``cls`` from ``data`` (a mapping), recursing into fields by their type hints."""
    return _convert(cls, data, source=source, key=key)


def _convert(tp: Any, value: Any, *, source: str | Path, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ParamsError(source, key, "must not be empty (null)")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, source=source, key=key)
            except ParamsError as err:
                errors.append(err.reason)
        raise ParamsError(source, key, "; ".join(errors))
    if value is None:
        raise ParamsError(source, key, f"must not be empty (expected {_type_name(tp)})")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ParamsError(source, key, f"{value!r} is not one of {list(allowed)}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass(tp, value, source=source, key=key)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = [m.value for m in tp]
            raise ParamsError(source, key, f"{value!r} is not one of {allowed}") from None
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ParamsError(source, key, f"expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, source=source, key=f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(source, key, f"expected a mapping, got {type(value).__name__}")
        k_tp, v_tp = get_args(tp) or (Any, Any)
        return {
            _convert(k_tp, k, source=source, key=f"{key}.{k}"): _convert(v_tp, v, source=source, key=f"{key}.{k}")
            for k, v in value.items()
        }
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ParamsError(source, key, f"expected a path string, got {value!r}")
        return Path(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(source, key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(source, key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamsError(source, key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(source, key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported parameter type {tp!r} at {key}")


def _dataclass(cls: type, value: Any, *, source: str | Path, key: str) -> Any:
    if not isinstance(value, dict):
        raise ParamsError(source, key, f"expected a mapping of {cls.__name__} fields, got {value!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    problems: list[tuple[str, str]] = []
    for name in sorted(set(value) - set(fields)):
        close = difflib.get_close_matches(str(name), list(fields), n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        problems.append(
            (f"{key}.{name}" if key else str(name), f"unknown key; {guess}allowed here: {', '.join(sorted(fields))}")
        )
    kwargs = {}
    for name, field in fields.items():
        sub = f"{key}.{name}" if key else name
        if name in value:
            try:
                kwargs[name] = _convert(hints[name], value[name], source=source, key=sub)
            except ParamsError as err:
                problems.extend(err.problems)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            problems.append((sub, "required key is missing"))
    if problems:
        raise ParamsError.of(source, problems)
    try:
        obj = cls(**kwargs)
    except ParamsError:
        raise
    except FieldError as err:
        raise ParamsError(source, f"{key}.{err.field}" if key else err.field, err.reason) from None
    except (ValueError, TypeError) as err:
        raise ParamsError(source, key, str(err)) from None
    return obj
