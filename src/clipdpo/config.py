"""Typed stage configs: dataclasses filled from JSON files and `--set key=value` overrides.

Every unknown key, wrongly typed value or value out of its range is an error naming the key and
where it came from (the config file, or the `--set` item that set it), so a typo or a NaN threshold
in a pipeline parameter fails at start-up instead of silently using a default or keeping nothing.

Ranges are declared once per config class, as a table `RANGES = {field: Range(...)}` checked by
`check_ranges(self)` in its `__post_init__`; every float field, listed or not, must be finite.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar, cast

from clipdpo.errors import UserError

T = TypeVar("T")


class ConfigError(ValueError, UserError):
    """A config value or key that cannot work. `field`: the dotted path of the value below the config's root
    when known; `local`: the message without the root's label (so the --set item that set it can be named)."""

    def __init__(self, message: str, *, field: str | None = None, local: str | None = None):
        super().__init__(message)
        self.field = field
        self.local = local if local is not None else message


class RangeError(ValueError):
    """A value of field `field` outside its declared range (raised in `__post_init__`)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _number_text(value: float | None) -> str:
    return "" if value is None else str(value) if isinstance(value, int) else f"{value:g}"


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a number may take: `low`/`high` bounds (None: unbounded), each inclusive unless `*_open`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        low, high = _number_text(self.low), _number_text(self.high)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {high}"
        return "a finite number"

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))


FINITE = Range()
NON_NEGATIVE = Range(low=0)
POSITIVE = Range(low=0, low_open=True)
AT_LEAST_1 = Range(low=1)
FRACTION = Range(low=0, high=1)  # a probability or share: [0, 1]
PROBABILITY_MASS = Range(low=0, high=1, low_open=True)  # top_p, memory shares: (0, 1]
SEED = Range(low=0, high=2**63 - 1)  # torch, numpy and the filter's hash all take it


def check_ranges(config: Any) -> None:
    """Check every numeric field of dataclass `config`: those in its class's `RANGES` table against their
    range, every other float for being finite. Raise `RangeError` naming the first field out of range."""
    ranges: dict[str, Range] = getattr(type(config), "RANGES", {})
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        allowed = ranges.get(item.name, FINITE if isinstance(value, float) else None)
        if allowed is not None and not allowed.contains(value):
            raise RangeError(item.name, f"{item.name} must be {allowed.describe()}, got {value!r}")


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


# A field's metadata that keeps it out of the keys that identify a result (caches, output fingerprints): how
# or where a run works, not what it computes. Marked on the field itself, so a new field is in every key
# unless it says otherwise.
NOT_IN_KEY = {"in_key": False}


def key_dict(config: Any) -> dict[str, Any]:
    """The config's top-level fields that decide its result (those without `NOT_IN_KEY`), as plain values."""
    return {f.name: to_dict(config)[f.name] for f in dataclasses.fields(config) if f.metadata.get("in_key", True)}


def _label(where: str, path: str) -> str:
    return f"{where}.{path}" if path else where


def _error(where: str, path: str, reason: str, field: str | None = None) -> ConfigError:
    return ConfigError(
        f"{_label(where, path)}: {reason}",
        field=field if field is not None else path,
        local=f"{path}: {reason}" if path else reason,
    )


def _coerce(value: Any, annotation: Any, where: str, path: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise _error(where, path, f"expected an object, got {value!r}")
        return _from_dict(annotation, value, where, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, path)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise _error(where, path, f"{value!r} matches none of {args}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _error(where, path, f"expected a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_coerce(item, item_type, where, f"{path}.{i}" if path else str(i)) for i, item in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise _error(where, path, f"expected an object, got {value!r}")
        value_type = args[1] if len(args) == 2 else Any
        return {
            key: _coerce(item, value_type, where, f"{path}.{key}" if path else str(key)) for key, item in value.items()
        }
    if annotation is Any:
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _error(where, path, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise _error(where, path, f"expected a finite number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _error(where, path, f"expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise _error(where, path, f"expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise _error(where, path, f"expected a string, got {value!r}")
        return value
    return value


def _from_dict(cls: type[T], data: dict[str, Any], where: str, path: str) -> T:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cast(Any, cls))}  # cls is a dataclass: _coerce and from_dict's callers
    unknown = sorted(set(data) - known)
    if unknown:
        first = f"{path}.{unknown[0]}" if path else unknown[0]
        raise _error(where, path, f"unknown key(s) {unknown}; valid keys are {sorted(known)}", field=first)
    values = {
        name: _coerce(value, hints[name], where, f"{path}.{name}" if path else name) for name, value in data.items()
    }
    try:
        return cls(**values)
    except ConfigError:
        raise
    except RangeError as err:
        full = f"{path}.{err.field}" if path else err.field
        reason = full + str(err)[len(err.field) :]  # "a.b must be ...", not "a: b must be ..."
        raise ConfigError(f"{where}: {reason}", field=full, local=reason) from err
    except (TypeError, ValueError) as err:
        raise _error(where, path, str(err)) from err


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from `data`; missing keys keep their defaults."""
    return _from_dict(cls, data, where, "")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list"}.get(
        type(value), type(value).__name__
    )


def _key_parts(item: str) -> tuple[list[str], str]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    parts = key.split(".")
    if not all(part.strip() for part in parts):
        raise ConfigError(f"--set {item!r}: the key {key!r} is empty or has an empty part; expected a.b=value")
    return parts, raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides; values parse as JSON, falling back to a plain string."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        parts, raw = _key_parts(item)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = data
        for depth, part in enumerate(parts[:-1]):
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"--set {item}: {where} is {_json_kind(target)} ({json.dumps(target)}), "
                    f"not an object with keys; set it whole: --set {where}=..."
                )
        target[parts[-1]] = value
    return data


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def check_override_key(cls: type, item: str, prefix: str = "") -> None:
    """Refuse an override whose key names no field of `cls`, or reaches into a field that has no keys
    (a number, a string, a list): the error names the --set item, not the config file. `prefix`: what the
    item's key starts with before the config's own keys (a pipeline's `filter.`)."""
    parts, _ = _key_parts(item[len(prefix) :] if prefix and item.startswith(prefix) else item)
    annotation: Any = cls
    for depth, part in enumerate(parts):
        annotation = _unwrap_optional(annotation)
        walked = ".".join(parts[:depth])
        if dataclasses.is_dataclass(annotation):
            hints = typing.get_type_hints(annotation)
            if part not in hints:
                of = f" of {walked}" if walked else ""
                raise ConfigError(
                    f"--set {item}: unknown key(s) [{'.'.join(parts[: depth + 1])!r}]; valid keys{of} "
                    f"are {sorted(f.name for f in dataclasses.fields(annotation))}"
                )
            annotation = hints[part]
        elif annotation is Any or typing.get_origin(annotation) is dict:
            return  # free-form below here: the values are checked when the config is built
        else:
            origin = typing.get_origin(annotation) or annotation
            kind = {
                int: "an integer",
                float: "a number",
                str: "a string",
                bool: "true or false",
                list: "a list",
                tuple: "a list",
            }.get(origin, getattr(origin, "__name__", str(origin)))
            raise ConfigError(
                f"--set {item}: {walked} is {kind}, not an object with keys; set it whole: --set {walked}=..."
            )


def _blamed_override(field: str | None, overrides: list[str], prefix: str = "") -> str | None:
    """The last --set item that set `field` (or a value inside it, or the object holding it)."""
    if not field:
        return None
    field = prefix + field
    for item in reversed(overrides):
        key = item.split("=", 1)[0]
        if key == field or field.startswith(key + ".") or key.startswith(field + "."):
            return item
    return None


def parse_text(text: str | bytes, where: str) -> dict[str, Any]:
    """The JSON object of a config file's contents, or an error naming the file and what is wrong."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"{where}: not UTF-8 text (byte {err.start}: {err.reason}); expected a JSON object of config keys"
            ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object of config keys, got {_json_kind(data)}")
    return data


def _read_local(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; expected a JSON config file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None


def load(cls: type[T], path: str | None, overrides: list[str], read_text=None) -> T:
    """Defaults of `cls`, then the JSON file at `path` (any URI `read_text` can read: text or bytes), then
    overrides. An error names the --set item that set the value it is about, else the file."""
    data: dict[str, Any] = {}
    if path:
        data = parse_text(read_text(path) if read_text else _read_local(path), path)
    for item in overrides:
        check_override_key(cls, item)
    return build(cls, apply_overrides(data, overrides), path or "config", overrides)


def build(cls: type[T], data: dict[str, Any], where: str, overrides: Sequence[str] = (), prefix: str = "") -> T:
    """`from_dict` of data that `overrides` (`--set <prefix>key=value` items) were applied to: an error about
    a value one of them set names that item; any other names `where`."""
    try:
        return from_dict(cls, data, where=where)
    except ConfigError as err:
        item = _blamed_override(err.field, list(overrides), prefix)
        if item is None:
            raise
        raise ConfigError(f"--set {item}: {err.local}", field=err.field, local=err.local) from err
