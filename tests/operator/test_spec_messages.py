"""Validation in our words (issue 26 #4): "did you mean" for unknown fields and values (difflib), our
own phrases instead of pydantic's, each problem once, every problem of a spec at once (a typo no longer
hides the problems behind it), the self-reference named as such; `olmorun` alone prints the help and
`olmorun --version` the version and the git commit."""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from olmo_operator import api
from olmo_operator.cli import main
from olmo_operator.spec_problems import closest, fields_at

ROOT = Path(__file__).parents[2]
TINY = yaml.safe_load((ROOT / "examples" / "olmorun-tiny.yaml").read_text())
PYDANTIC_WORDS = re.compile(
    r"Input should|valid integer|unable to parse|Value error|after validation|String should"
)


def problems(edit: Callable[[dict[str, Any]], Any]) -> list[tuple[str, str]]:
    document = copy.deepcopy(TINY)
    edit(document)
    with pytest.raises(api.SpecError) as error:
        api.parse_olmorun(document)
    return [(p.path, p.message) for p in error.value.problems]


def phase(document: dict[str, Any], i: int) -> dict[str, Any]:
    phases: list[dict[str, Any]] = document["spec"]["phases"]
    return phases[i]


def test_an_unknown_field_gets_did_you_mean_and_is_one_problem() -> None:
    """`modle` is both unknown and the reason `model` is missing: one problem, at the typo."""
    assert problems(lambda d: d["spec"].__setitem__("modle", d["spec"].pop("model"))) == [
        ("spec.modle", "unknown field; did you mean `model`?")
    ]
    found = problems(lambda d: phase(d, 0)["batch"].update(zzz=1))
    assert found == [
        (
            "spec.phases[0].batch.zzz",
            "unknown field; remove it (the fields here: globalBatchSize, microBatchSize)",
        )
    ]


def test_an_unknown_value_gets_did_you_mean_in_our_words() -> None:
    assert problems(lambda d: phase(d, 0)["schedule"].update(kind="cosin")) == [
        (
            "spec.phases[0].schedule.kind",
            "expected one of cosine, linear, constant, got 'cosin'; did you mean 'cosine'?",
        )
    ]


@pytest.mark.parametrize(
    ("edit", "path", "message"),
    [
        (
            lambda d: phase(d, 0)["batch"].update(globalBatchSize="abc"),
            "spec.phases[0].batch.globalBatchSize",
            "expected a whole number, got 'abc'",
        ),
        (lambda d: d["spec"].update(seed=[1]), "spec.seed", "expected a whole number, got a list"),
        (lambda d: d["spec"].update(phases="pretrain"), "spec.phases", "expected a list, got 'pretrain'"),
        (lambda d: d["spec"].update(seed=-1), "spec.seed", "must be >= 0, got -1"),
    ],
)
def test_type_errors_say_what_is_expected_and_what_was_given(
    edit: Callable[[dict[str, Any]], Any], path: str, message: str
) -> None:
    assert problems(edit) == [(path, message)]


def test_a_field_of_two_types_is_one_problem() -> None:
    """`lr` is a number or `inherit`: pydantic reports one error per member of the union."""
    assert problems(lambda d: phase(d, 0)["optim"].update(lr="fast")) == [
        ("spec.phases[0].optim.lr", "expected a number or 'inherit', got 'fast'")
    ]


def test_a_typo_in_kind_no_longer_hides_the_batch_problem_of_the_same_phase() -> None:
    def edit(d: dict[str, Any]) -> None:
        phase(d, 1)["kind"] = "aneal"
        phase(d, 1)["batch"]["globalBatchSize"] = 3

    found = dict(problems(edit))
    assert found["spec.phases[1].kind"].endswith("got 'aneal'; did you mean 'anneal'?")
    assert found["spec.phases[1].batch.globalBatchSize"].startswith("3 is not divisible by")
    assert len(found) == 2


def test_every_problem_at_once_each_once_and_never_in_pydantics_words() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["spec"]["modle"] = d["spec"].pop("model")
        d["spec"]["seed"] = "x"
        phase(d, 0)["schedule"]["kind"] = "cosin"
        phase(d, 0)["optim"]["lr"] = None
        phase(d, 1)["kind"] = "aneal"
        phase(d, 1)["batch"]["globalBatchSize"] = 3

    found = problems(edit)
    paths = [path for path, _ in found]
    assert len(paths) == len(set(paths)) == 6, found
    assert not [m for _, m in found if PYDANTIC_WORDS.search(m)], found


def test_a_phase_that_starts_from_itself_is_named_as_such() -> None:
    found = dict(problems(lambda d: phase(d, 3).update({"from": "sft"})))
    assert found["spec.phases[3].from"] == "phase 'sft' starts from itself; name another phase"


def test_fields_at_follows_the_document_and_closest_needs_a_close_match() -> None:
    assert "globalBatchSize" in fields_at(api.OlmoRun, ("spec", "phases", 0, "batch"))
    assert "endpointUrl" in fields_at(api.OlmoRun, ("spec", "storage"))
    assert closest("modle", ["model", "storage"]) == "model"
    assert closest("zzz", ["model", "storage"]) is None


def test_bare_olmorun_prints_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: olmorun") and "validate" in out and "report" in out


def test_version_prints_the_version_and_the_git_commit(capsys: pytest.CaptureFixture[str]) -> None:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out.strip()
    assert re.fullmatch(r"olmorun \d+\.\d+\.\d+\S* \(git ([0-9a-f]{40}|unknown)(, dirty)?\)", out), out
    if head.returncode == 0:  # a clone (not an exported tree): the commit is the checkout's
        assert head.stdout.strip() in out
