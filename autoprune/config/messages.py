"""Turn a pydantic validation error into the one line a user reads: source, field, value, what is allowed."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from autoprune.errors import one_line

_TYPE_HINTS = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "finite_number": "expected a finite number",
}
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}


def describe_validation_error(e: ValidationError, source: str, applied: list[tuple[tuple[str, ...], str]], root: type[BaseModel]) -> str:
    """One line for the first (most useful) pydantic error: source or override, field path, value, what is allowed."""
    errors = e.errors(include_url=False)
    # An unknown field first: a misspelt section ('modle:') also makes the real one 'missing'.
    errors.sort(key=lambda err: err["type"] != "extra_forbidden")
    err = errors[0]
    loc = tuple(err["loc"])
    path = _loc_str(loc)
    for keys, item in reversed(applied):
        if loc[: len(keys)] == keys or keys[: len(loc)] == loc:
            source = f"override {item!r}"
            break
    msg = f"{source}: {path}: {_explain(err, loc, root)}" if path else f"{source}: {_explain(err, loc, root)}"
    if len(errors) > 1:
        n = len(errors) - 1
        msg += f" (+{n} more error{'s' if n > 1 else ''})"
    return one_line(msg, None)


def _explain(err: Any, loc: tuple[Any, ...], root: type[BaseModel]) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    section = _section_at(loc, root)
    if kind == "missing":
        if section is not None:
            return f"missing required section (fields: {', '.join(section.model_fields)})"
        return "missing required field"
    if kind == "extra_forbidden":
        parent = _section_at(loc[:-1], root) or root
        allowed = list(parent.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown field{hint}; allowed fields: {', '.join(allowed)}"
    if kind in ("model_type", "model_attributes_type", "dict_type") and section is not None:
        return f"{show_value(value)} is not allowed; expected a mapping with fields: {', '.join(section.model_fields)}"
    if kind == "literal_error":
        return f"{show_value(value)} is not allowed; allowed: {ctx.get('expected')}"
    if kind == "not_allowed":
        return f"{show_value(value)} is not allowed; allowed: {ctx.get('allowed')}"
    if kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        return f"{show_value(value)} is not allowed; must be {op} {ctx.get(key)}"
    if kind in _TYPE_HINTS:
        return f"{show_value(value)} is not allowed; {_TYPE_HINTS[kind]}"
    text = str(err.get("msg", kind))
    if kind in ("value_error", "assertion_error", "invalid_combination", "invalid_reference", "invalid_name"):
        return text.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return f"{show_value(value)} is not allowed; {text[:1].lower()}{text[1:]}"


def _section_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The section class at ``loc`` in the schema, or None if ``loc`` is not a section."""
    cls: type[BaseModel] | None = root
    for part in loc:
        if cls is None or not isinstance(part, str) or part not in cls.model_fields:
            return None
        ann = cls.model_fields[part].annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return cls


def _loc_str(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def show_value(value: Any, limit: int = 60) -> str:
    """``repr`` shortened to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


