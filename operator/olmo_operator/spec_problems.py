"""Our words for pydantic's validation errors of an OlmoRun (pure: no I/O; api.parse_olmorun calls it).

    problems = describe(error.errors(), document, OlmoRun)   # [(path, message)], each problem once
    repaired = repair(error.errors(), document, OlmoRun)     # the document with its typos corrected, or None

- Every error names the field by its path in the document and says what is expected and what was
  given, in our wording ("expected a whole number, got 'abc'"), never pydantic's.
- A field that is one of several types (`lr: 3e-4 | inherit`) is one problem, not one per type.
- An unknown field or value gets "did you mean" (difflib's closest match among the fields or values
  allowed there); an unknown field whose match is a missing required field is one problem.
- `repair` corrects those typos, so that the caller can validate again and report what the typos hid
  (a phase with `kind: aneal` is not checked further by pydantic): every problem of a spec at once.
"""

from __future__ import annotations

import copy
import difflib
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

Location = tuple[int | str, ...]

EXPECTED = {
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "text",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
}
"""pydantic error type -> what the field expects, in our words."""
BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")
CUTOFF = 0.6
"""difflib's similarity ratio a suggestion needs (its default): `modle` -> `model`, `aneal` -> `anneal`."""


def _unwrap(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (through Optional, unions, lists, dicts, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _unwrap(arg)
    return found


def _key(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    return field.alias or name


def _models_at(root: type[BaseModel], loc: Iterable[int | str]) -> list[type[BaseModel]]:
    models = [root]
    for part in loc:
        if not isinstance(part, str):
            continue  # a list index: its items have the element's model
        following = [
            inner
            for model in models
            for name in model.model_fields
            if part in (name, _key(model, name))
            for inner in _unwrap(model.model_fields[name].annotation)
        ]
        models = following or models  # a union member's label, not a field: stay
    return models


def fields_at(root: type[BaseModel], loc: Iterable[int | str]) -> list[str]:
    """The field names (as written in a document: aliases) allowed in the mapping at `loc`."""
    return sorted({_key(model, name) for model in _models_at(root, loc) for name in model.model_fields})


def _optional(root: type[BaseModel], loc: Location) -> bool:
    """Whether the field at `loc` has a default (so that a document without it still validates)."""
    last = loc[-1] if loc else None
    return any(
        not model.model_fields[name].is_required()
        for model in _models_at(root, loc[:-1])
        for name in model.model_fields
        if last in (name, _key(model, name))
    )


def closest(word: str, choices: Sequence[str]) -> str | None:
    """The choice most like `word` (difflib), or None when none is close enough."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=CUTOFF)
    return found[0] if found else None


def _choices(item: Mapping[str, Any]) -> list[str]:
    """The values a literal or enum accepts, from pydantic's `expected` ('a', 'b' or 'c')."""
    expected = str((item.get("ctx") or {}).get("expected", ""))
    return [m.group(1) for m in _QUOTED.finditer(expected)]


def _given(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _phrase(item: Mapping[str, Any]) -> str | None:
    """What this error says the field expects ("a whole number"), when it is a type or value error."""
    kind = item["type"]
    if kind in EXPECTED:
        return EXPECTED[kind]
    if kind in ("literal_error", "enum"):
        values = _choices(item)
        return f"one of {', '.join(values)}" if len(values) > 1 else repr(values[0]) if values else None
    return None


def _message(item: Mapping[str, Any], root: type[BaseModel]) -> str:
    """One error in our words (the ones that are not type errors)."""
    kind, ctx, value = item["type"], item.get("ctx") or {}, item.get("input")
    if kind == "extra_forbidden":
        field = str(item["loc"][-1])
        allowed = fields_at(root, item["loc"][:-1])
        match = closest(field, allowed)
        if match:
            return f"unknown field; did you mean `{match}`?"
        return f"unknown field; remove it (the fields here: {', '.join(allowed)})"
    if kind == "missing":
        return "required field is missing; add it"
    if kind in BOUNDS:
        bound = next(iter(ctx.values()), "?")
        return f"must be {BOUNDS[kind]} {bound}, got {_given(value)}"
    if kind in ("too_short", "string_too_short", "too_long", "string_too_long"):
        unit = "characters" if kind.startswith("string") else "items"
        bound = f"at least {ctx.get('min_length')}" if "short" in kind else f"at most {ctx.get('max_length')}"
        size = f", got {len(value)}" if isinstance(value, str | list | dict) else ""
        return f"expected {bound} {unit}{size}"
    if kind == "string_pattern_mismatch":
        return f"{_given(value)} does not match the pattern {ctx.get('pattern')}"
    return str(item["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _expectation(phrases: list[str], items: list[Mapping[str, Any]]) -> str:
    value = items[0].get("input")
    text = f"expected {' or '.join(dict.fromkeys(phrases))}, got {_given(value)}"
    choices = [c for item in items if item["type"] in ("literal_error", "enum") for c in _choices(item)]
    match = closest(value, choices) if isinstance(value, str) else None
    return f"{text}; did you mean {match!r}?" if match else text


def describe(
    errors: Sequence[Mapping[str, Any]],
    path_of: typing.Callable[[Location, bool], str],
    root: type[BaseModel],
) -> list[tuple[str, str]]:
    """(path, message) of every problem, each once, in the order pydantic found them.

    `path_of(loc, missing)` turns a pydantic location into the field's path in the document.
    """
    by_path: dict[str, list[Mapping[str, Any]]] = {}
    for item in errors:
        by_path.setdefault(path_of(tuple(item["loc"]), item["type"] == "missing"), []).append(item)
    suggested = {
        _sibling(path, closest(str(item["loc"][-1]), fields_at(root, item["loc"][:-1])) or "")
        for path, items in by_path.items()
        for item in items
        if item["type"] == "extra_forbidden"
    }
    out: list[tuple[str, str]] = []
    for path, items in by_path.items():
        if path in suggested and all(item["type"] == "missing" for item in items):
            continue  # `modle` for `model`: one problem, said at the unknown field
        typed = [(item, _phrase(item)) for item in items]
        phrases = [phrase for _, phrase in typed if phrase]
        messages = [_expectation(phrases, [item for item, phrase in typed if phrase])] if phrases else []
        messages += [_message(item, root) for item, phrase in typed if not phrase]
        out += [(path, message) for message in dict.fromkeys(messages)]
    return out


def _sibling(path: str, name: str) -> str:
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    return f"{parent}.{name}" if parent else name


def repair(errors: Sequence[Mapping[str, Any]], document: Any, root: type[BaseModel]) -> Any | None:
    """A copy of `document` with every typo that has a close match corrected (an unknown field renamed
    to the field it resembles, an unknown value replaced by the value it resembles) and every other
    wrong field that has a default removed; None when there is nothing to change. Only for validating
    again: what those errors hid (the checks of a whole phase) is then found too."""
    fixed = copy.deepcopy(document)
    changed = False
    for item in errors:
        loc = tuple(item["loc"])
        parent = _node(fixed, loc[:-1])
        last = loc[-1] if loc else None
        if item["type"] == "extra_forbidden" and isinstance(parent, dict) and last in parent:
            match = closest(str(last), fields_at(root, loc[:-1]))
            if match and match not in parent:
                parent[match] = parent.pop(last)
                changed = True
        elif item["type"] in ("literal_error", "enum") and isinstance(item.get("input"), str):
            match = closest(item["input"], _choices(item))
            holder = _node(fixed, _existing(fixed, loc)[:-1])
            key = _existing(fixed, loc)[-1:] or (None,)
            if match and isinstance(holder, dict | list) and _get(holder, key[0]) == item["input"]:
                holder[key[0]] = match  # type: ignore[index]
                changed = True
        elif item["type"] != "missing":
            found = _existing(fixed, loc)
            holder = _node(fixed, found[:-1])
            if found and isinstance(holder, dict) and found[-1] in holder and _optional(root, found):
                del holder[found[-1]]
                changed = True
    return fixed if changed else None


def _get(holder: Any, key: Any) -> Any:
    try:
        return holder[key]
    except (KeyError, IndexError, TypeError):
        return None


def _existing(document: Any, loc: Location) -> Location:
    """The parts of a pydantic location that exist in the document (union labels dropped)."""
    kept: list[int | str] = []
    node = document
    for part in loc:
        value = _get(node, part) if isinstance(node, dict | list) else None
        if value is not None or (isinstance(node, dict) and part in node):
            kept.append(part)
            node = value
    return tuple(kept)


def _node(document: Any, loc: Location) -> Any:
    node = document
    for part in _existing(document, loc):
        node = _get(node, part)
    return node
