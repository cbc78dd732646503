"""The OlmoRun API: valid examples parse; every class of bad input is reported with its field path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from olmo_operator import api

EXAMPLES = sorted(Path(__file__).parents[2].joinpath("examples").glob("*.yaml"))


def tiny() -> dict[str, Any]:
    return yaml.safe_load(Path(__file__).parents[2].joinpath("examples/olmorun-tiny.yaml").read_text())


def problems_of(document: dict[str, Any]) -> dict[str, str]:
    return {p.path: p.message for p in api.check_olmorun(document)}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(path: Path) -> None:
    run = api.parse_olmorun(yaml.safe_load(path.read_text()))
    assert run.spec.phases[0].kind == "pretrain"
    assert api.topological_order(run)[0].name == "pretrain"


def test_examples_cover_the_recipe() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"olmorun-tiny.yaml", "olmo2-1b.yaml", "olmo2-7b.yaml", "olmo2-13b.yaml"} <= names
    seven = api.parse_olmorun(yaml.safe_load(Path(EXAMPLES[0]).parent.joinpath("olmo2-7b.yaml").read_text()))
    pretrain, anneal = seven.phase("pretrain"), seven.phase("anneal")
    assert pretrain.max_tokens == 3_900_000_000_000
    assert pretrain.batch is not None and pretrain.batch.global_batch_size == 1024  # x 4096 = ~4.2M tokens
    assert anneal.seeds == [42, 42069, 666] and anneal.max_tokens == 50_000_000_000
    assert seven.spec.seed == 6198
    assert [p.kind for p in seven.spec.phases] == ["pretrain", "anneal", "soup", "sft", "dpo", "rlvr"]


def test_camel_case_round_trip_keeps_every_field() -> None:
    run = api.parse_olmorun(tiny())
    again = api.parse_olmorun(run.model_dump(mode="json", by_alias=True, exclude={"status"}))
    assert again.spec == run.spec


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (lambda d: d["spec"]["phases"][1].update(name="pretrain"), "spec.phases[1].name", "duplicate"),
        (lambda d: d["spec"]["phases"][1].update({"from": "nope"}), "spec.phases[1].from", "no phase named"),
        (lambda d: d["spec"]["phases"][1].pop("from"), "spec.phases[1].from", "set `from`"),
        (lambda d: d["spec"]["phases"][1].update(seeds=[1]), "spec.phases[2].from", "need >= 2"),
        (lambda d: d["spec"]["phases"][0].update({"from": "rlvr"}), "spec.phases[0].from", "cycle"),
        (
            lambda d: d["spec"]["phases"][3].update({"from": "anneal"}),
            "spec.phases[3].from",
            "add a soup phase",
        ),
        (lambda d: d["metadata"].update(name="Not_A_Name"), "metadata.name", "DNS label"),
        (lambda d: d["spec"]["phases"][0].update(name="Pre Train"), "spec.phases[0].name", "DNS label"),
        (lambda d: d["spec"].update(colour="red"), "spec.colour", "unknown field"),
        (
            lambda d: d["spec"]["phases"][0].update(maxTokens="lots"),
            "spec.phases[0].maxTokens",
            "token count",
        ),
        (
            lambda d: d["spec"]["phases"][0]["batch"].update(globalBatchSize=10),
            "spec.phases[0].batch.globalBatchSize",
            "multiple of 8",
        ),
        (lambda d: d["spec"]["phases"][0].pop("data"), "spec.phases[0].data", "needs `data`"),
        (lambda d: d["spec"]["phases"][0].pop("maxTokens"), "spec.phases[0].maxTokens", "budget"),
        (
            lambda d: d["spec"]["phases"][2].update(batch={"globalBatchSize": 8}),
            "spec.phases[2].batch",
            "does not train",
        ),
        (lambda d: d["spec"]["phases"][3].pop("sft"), "spec.phases[3].sft", "needs its `sft`"),
        (lambda d: d["spec"]["phases"][0].update(kind="pretraining"), "spec.phases[0].kind", "pretrain"),
        (lambda d: d["spec"]["storage"].update(uri="ftp://host/x"), "spec.storage.uri", "not supported"),
        (
            lambda d: d["spec"]["phases"][0]["data"].update(sequenceLength=4096),
            "spec.phases[0].data.sequenceLength",
            "maxSequenceLength",
        ),
        (lambda d: d["spec"]["model"].update(preset="olmo2-9b"), "spec.model.preset", "olmo2-7b"),
        (lambda d: d["spec"].pop("image"), "spec.image", "missing"),
    ],
)
def test_bad_input_names_the_field(mutate: Any, path: str, fragment: str) -> None:
    document = tiny()
    mutate(document)
    found = problems_of(document)
    assert path in found, found
    assert fragment in found[path]


def test_all_problems_are_reported_at_once() -> None:
    document = tiny()
    document["metadata"]["name"] = "UPPER"
    document["spec"]["phases"][1]["from"] = "missing"
    document["spec"]["phases"][0]["maxTokens"] = "x"
    found = problems_of(document)
    assert {"metadata.name", "spec.phases[1].from", "spec.phases[0].maxTokens"} <= set(found)


def test_non_mapping_documents_are_rejected_cleanly() -> None:
    for document in (None, [], "text", 3):
        with pytest.raises(api.SpecError) as error:
            api.parse_olmorun(document)
        assert error.value.problems[0].path == "(document)"


def test_status_uses_kubernetes_conventions() -> None:
    status = api.OlmoRunStatus(
        observed_generation=3,
        stage="anneal",
        conditions=[
            api.Condition(type="Succeeded", status="Unknown", reason="Annealing", last_transition_time="t")
        ],
        phases={
            "pretrain": api.PhaseStatus(state="Succeeded", attempts=1, checkpoint="s3://b/c", last_loss=2.5)
        },
    )
    wire = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert wire["observedGeneration"] == 3
    assert wire["conditions"][0]["lastTransitionTime"] == "t"
    assert wire["phases"]["pretrain"]["lastLoss"] == 2.5
    assert api.OlmoRunStatus.model_validate(copy.deepcopy(wire)) == status


def test_the_old_archive_field_is_read_as_archive_final_with_a_deprecation() -> None:
    document = tiny()
    document["spec"]["phases"][0]["archive"] = False
    run = api.parse_olmorun(document)
    assert run.spec.phases[0].archive_final is False
    assert api.deprecations(run) == [
        "spec.phases[0].archive is deprecated: write archiveFinal (same meaning)"
    ]
    document["spec"]["phases"][0]["archiveFinal"] = True  # both, disagreeing: refused, naming the field
    with pytest.raises(api.SpecError, match="archiveFinal"):
        api.parse_olmorun(document)
    assert api.deprecations(api.parse_olmorun(tiny())) == []


def test_a_status_written_before_active_phases_is_read() -> None:
    old = api.OlmoRunStatus.model_validate({"stage": "pretrain,anneal", "observedGeneration": 2})
    assert (old.stage, old.active_phases) == ("Running", ["pretrain", "anneal"])
    assert api.OlmoRunStatus.model_validate({"stage": "Succeeded"}).active_phases == []
