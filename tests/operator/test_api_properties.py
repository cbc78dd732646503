"""Property tests of validation, over arbitrary documents and over the tiny example with one value changed:

- a document either parses or raises SpecError, never another exception;
- a document that parses round-trips: its camelCase dump parses to the same run;
- a document that does not names, in every problem, a field of the document (or the missing field
  of an object the document has), with a message, and the same problems every time.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from olmo_operator import api

TINY = yaml.safe_load(Path(__file__).parents[2].joinpath("examples/olmorun-tiny.yaml").read_text())

KEYS = st.text(alphabet=st.characters(blacklist_characters=".[]"), max_size=10)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["50B", "3.9T", "inherit", "pretrain", "soup", "tiny", "-1", "1e9", ""]),
)
json_values = st.recursive(
    scalars,
    # Keys without '.', '[' or ']': a problem path could not tell such a key from nesting.
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=4)),
    max_leaves=20,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


PATHS = [p for p in _paths(TINY) if p]


def _node(document: Any, path: str) -> tuple[bool, bool]:
    """Whether a problem path exists in the document, and whether its parent does.

    Paths read as `_loc_to_path` writes them: `spec.phases[1].from`, `metadata.name`, `(document)`."""
    if path == "(document)":
        return True, True
    parts: list[str | int] = []
    for dotted in path.split("."):
        name, *indices = dotted.replace("]", "").split("[")
        parts += [name, *(int(i) for i in indices)] if name else [int(i) for i in indices]
    node, parent_found = document, True
    for position, part in enumerate(parts):
        last = position == len(parts) - 1
        in_dict = isinstance(node, dict) and part in node
        if in_dict or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            node = node[part]
        else:
            return False, last and parent_found
    return True, True


def _parse_or_spec_error(document: Any) -> None:
    try:
        run = api.parse_olmorun(document)
    except api.SpecError as error:
        assert error.problems, "a SpecError always names at least one problem"
        for problem in error.problems:
            assert problem.message, problem
            exists, parent_exists = _node(document, problem.path)
            assert exists or parent_exists, f"{problem.path!r} is not a field of the document: {problem}"
        assert api.check_olmorun(document) == error.problems  # deterministic, and the list form agrees
        assert str(error) == "; ".join(f"{p.path}: {p.message}" for p in error.problems)
    else:
        again = api.parse_olmorun(run.model_dump(mode="json", by_alias=True, exclude={"status"}))
        assert again == run, "a valid document must round-trip to the same run"
        assert api.check_olmorun(document) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_documents(document: Any) -> None:
    _parse_or_spec_error(document)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PATHS), json_values)
def test_mutated_examples(path: tuple[Any, ...], value: Any) -> None:
    document = copy.deepcopy(TINY)
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    _parse_or_spec_error(document)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_yaml_text(text: str) -> None:
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return
    for document in documents:
        _parse_or_spec_error(document)
