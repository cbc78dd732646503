"""Property tests: any document yields a valid OlmoRun or a SpecError, never another exception."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from olmo_operator import api

TINY = yaml.safe_load(Path(__file__).parents[2].joinpath("examples/olmorun-tiny.yaml").read_text())

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.text(max_size=12),
    st.sampled_from(["50B", "3.9T", "inherit", "pretrain", "soup", "tiny", "-1", "1e9", ""]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)),
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


def _parse_or_spec_error(document: Any) -> None:
    try:
        run = api.parse_olmorun(document)
    except api.SpecError as error:
        assert error.problems, "a SpecError always names at least one problem"
        assert all(p.path and p.message for p in error.problems)
    else:
        assert isinstance(run, api.OlmoRun)


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
