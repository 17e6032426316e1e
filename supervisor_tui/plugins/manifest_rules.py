"""How a manifest field is declared and checked: a ``Rule`` per field, and the walk that applies them.

- ``Rule``, attached to a field as ``Annotated[type, Rule(...)]``: how a wrong type is worded, and ``check`` for
  what a type cannot say (ranges, patterns, reserved names, NUL characters). A check returns the value normalised
  (durations in seconds, sizes in bytes, methods upper-case) or raises ValueError with the problem. The
  ``*_rule`` helpers build the common ones (strings, booleans, bounded integers, durations, choices).
- ``fields_of(schema)``: a Struct's declared fields with their rules (docs/manifest.md is checked against them).
- ``checked(obj)``: a decoded Struct's field values after their checks (the fast path: the file decoded at once).
- ``diagnose(raw, schema)``: the first problem of a JSON object that did not decode, in file order, worded as the
  field's rule says (msgspec's own messages, like "Expected `int`, got `str` - at `$.port`", never reach an
  operator).
- ``field_value(schema, name, raw)``: one field's raw JSON value, type-checked and checked.

Problems are ValueError texts; one that starts with ``[i]`` or ``.sub`` names a part of the field
(``endpoints[2].method``, ``health.path``), which ``manifest.ManifestError`` turns into the field's name.
The manifest's own fields are declared in manifest_schema.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args, get_type_hints

import msgspec
from msgspec import UNSET

from supervisor_tui.config import parse_duration


def kind(value: Any) -> str:
    """How a wrong JSON value is named in a problem: "a string", "a list", "null"."""
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


@dataclass(frozen=True, slots=True)
class Rule:
    """What a field accepts beyond its type, and how its problems are worded.

    A wrong type reads ``expected``, then ", got " and ``got(value)`` (omitted when ``got`` is None); a wrong type
    inside a list reads ``inner`` when given. With ``raw_check`` the check words problems inside the value itself,
    so a wrong type inside is handed to it raw. ``missing`` words an absent required field. ``doc_default`` is the
    default as docs/manifest.md says it, where it is not the default value itself.
    """

    expected: str
    got: Callable[[Any], str] | None = kind
    check: Callable[[Any], Any] | None = None
    inner: str | None = None
    raw_check: bool = False
    missing: str = "is required"
    doc_default: str | None = None

    def wrong_type(self, raw: Any, inside: bool) -> str:
        if inside and self.inner is not None:
            return self.inner
        return self.expected if self.got is None else f"{self.expected}, got {self.got(raw)}"


def string_rule(doc_default: str | None = None) -> Rule:
    return Rule("must be a string", doc_default=doc_default)


def boolean_rule() -> Rule:
    return Rule("must be true or false")


def integer_rule(lo: int, hi: int) -> Rule:
    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return Rule("must be an integer", check=check)


_DURATION_WORDS = 'must be a number of seconds or a duration like "5s"'


def seconds_rule(lo: float, hi: float, doc_default: str | None = None) -> Rule:
    def check(value: float | str) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise ValueError(f"{_DURATION_WORDS}, got {value!r}") from None
        except OverflowError:  # an integer no float can hold
            raise ValueError(f"must be between {lo:g} and {hi:g} seconds, got a larger number") from None
        if not lo <= seconds <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g} seconds, got {seconds:g}")
        return seconds

    return Rule(_DURATION_WORDS, check=check, doc_default=doc_default)


def one_of_rule(choices: tuple[str, ...], doc_default: str | None = None) -> Rule:
    words = f"must be one of {', '.join(choices)}"

    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{words}, got {value!r}")
        return value

    return Rule(words, got=repr, check=check, doc_default=doc_default)


@dataclass(frozen=True, slots=True)
class Field:
    """One declared field: its name, its type without the rule, its rule and its default (UNSET or NODEFAULT)."""

    name: str
    type: Any
    rule: Rule
    default: Any


def fields_of(schema: type[msgspec.Struct]) -> dict[str, Field]:
    """The declared fields of ``schema``, in declaration order."""
    cached = _FIELDS.get(schema)
    if cached is None:
        hints = get_type_hints(schema, include_extras=True)
        cached = {}
        for info in msgspec.structs.fields(schema):
            base, rule = get_args(hints[info.name])
            default = info.default_factory() if info.default_factory is not msgspec.NODEFAULT else info.default
            cached[info.name] = Field(info.name, base, rule, default)
        _FIELDS[schema] = cached
        _CHECKS[schema] = tuple((f.name, f.rule.check, f.default) for f in cached.values() if f.rule.check)
    return cached


_FIELDS: dict[type, dict[str, Field]] = {}
_CHECKS: dict[type, tuple[tuple[str, Callable[[Any], Any], Any], ...]] = {}


def checked(obj: msgspec.Struct, where: str = "") -> dict[str, Any]:
    """Every field of a decoded ``obj`` after its check (defaults and nulls are valid as declared)."""
    # A default is declared in its checked form, so a value equal to it needs no check (most fields of most files).
    schema = type(obj)
    if schema not in _CHECKS:
        fields_of(schema)
    values = msgspec.structs.asdict(obj)
    for name, check, default in _CHECKS[schema]:
        value = values[name]
        if value is None or value is UNSET or value == default:
            continue
        try:
            values[name] = check(value)
        except ValueError as exc:
            raise ValueError(_at(f"{where}.{name}", str(exc))) from None
    return values


def diagnose(raw: dict[str, Any], schema: type[msgspec.Struct], where: str = "") -> dict[str, Any]:
    """``raw``'s fields checked one by one in file order: their values, or ValueError with the first problem."""
    fields = fields_of(schema)
    for name in raw:
        if name not in fields:
            raise ValueError(_at(where, f"has unknown field {name!r} (allowed: {', '.join(fields)})"))
    values = {f.name: f.default for f in fields.values() if f.default is not msgspec.NODEFAULT}
    for name, value in raw.items():
        try:
            values[name] = field_value(schema, name, value)
        except ValueError as exc:
            raise ValueError(_at(f"{where}.{name}", str(exc))) from None
    for f in fields.values():
        if f.name not in values:
            raise ValueError(_at(f"{where}.{f.name}", f.rule.missing))
    return values


def field_value(schema: type[msgspec.Struct], name: str, raw: Any) -> Any:
    """One field's raw JSON value type-checked and checked: the value, or ValueError with the problem."""
    f = fields_of(schema)[name]
    if raw is None and f.default is None:
        return None
    try:
        value = msgspec.convert(raw, f.type)
    except msgspec.ValidationError as exc:
        # msgspec names a path only below the value itself; "Object ..." is about an object's fields
        inside = " - at `$" in str(exc) or str(exc).startswith("Object ")
        if not (inside and f.rule.raw_check and f.rule.check):
            raise ValueError(f.rule.wrong_type(raw, inside)) from None
        value = raw  # the check words what is wrong inside
    return f.rule.check(value) if f.rule.check else value


def _at(where: str, problem: str) -> str:
    """A problem of a part of a field reads "[2].method must be ..." ("" for the field itself)."""
    if problem.startswith(("[", ".")):  # already names a part of the part
        return where + problem
    return f"{where} {problem}" if where else problem
