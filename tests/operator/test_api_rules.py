"""Every validation rule of api.py fed the bad input it exists for, with its exact message, and the
limits of names and counts on both sides of the boundary.

The document is the tiny example (pretrain -> anneal x2 seeds -> soup -> sft -> dpo -> rlvr; one
node of 2 CPU processes, microBatchSize 4, so a global batch must be a multiple of 8).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from olmo_operator import api

TINY = Path(__file__).parents[2] / "examples" / "olmorun-tiny.yaml"
PHASES = ["anneal", "dpo", "pretrain", "rlvr", "sft", "soup"]


def tiny() -> dict[str, Any]:
    return yaml.safe_load(TINY.read_text())


def phase(document: dict[str, Any], index: int) -> dict[str, Any]:
    found: dict[str, Any] = document["spec"]["phases"][index]
    return found


def problems_of(document: Any) -> dict[str, str]:
    found = api.check_olmorun(document)
    assert len({p.path for p in found}) == len(found), f"a path is reported twice: {found}"
    return {p.path: p.message for p in found}


Edit = Callable[[dict[str, Any]], Any]

QUANTITY_HINT = (
    "write a number with an optional suffix Ki/Mi/Gi/Ti (powers of 1024), k/M/G/T (powers of 1000) "
    "or m (thousandths), e.g. "
)

# (edit of the tiny example, the one problem it causes: path, exact message)
RULES: list[tuple[str, Edit, str, str]] = [
    (
        "name-not-dns",
        lambda d: d["metadata"].update(name="Not_A_Name"),
        "metadata.name",
        "'Not_A_Name' must be a DNS label: lowercase letters, digits and '-', at most 63",
    ),
    (
        "name-64-chars",
        lambda d: d["metadata"].update(name="a" * 64),
        "metadata.name",
        f"{'a' * 64!r} must be a DNS label: lowercase letters, digits and '-', at most 63",
    ),
    (
        "name-ends-in-dash",
        lambda d: d["metadata"].update(name="run-"),
        "metadata.name",
        "'run-' must be a DNS label: lowercase letters, digits and '-', at most 63",
    ),
    (
        "phase-name-not-dns",
        lambda d: phase(d, 5).update(name="Rl Vr"),
        "spec.phases[5].name",
        "'Rl Vr' must be a DNS label (lowercase, digits, '-')",
    ),
    (
        "phase-name-41-chars",
        lambda d: phase(d, 5).update(name="r" * 41),
        "spec.phases[5].name",
        "expected at most 40 characters, got 41",
    ),
    (
        "duplicate-phase",
        lambda d: phase(d, 5).update(name="pretrain"),
        "spec.phases[5].name",
        "duplicate phase name 'pretrain' (also spec.phases[0]); rename one",
    ),
    (
        "unknown-parent",
        lambda d: phase(d, 5).update({"from": "nope"}),
        "spec.phases[5].from",
        f"no phase named 'nope'; choose one of {PHASES}",
    ),
    (
        "anneal-without-parent",
        lambda d: (phase(d, 1).pop("from"), phase(d, 2).update({"from": "pretrain"})),
        "spec.phases[1].from",
        "a anneal phase starts from another phase; set `from`",
    ),
    (
        "soup-without-parent",
        lambda d: phase(d, 2).pop("from"),
        "spec.phases[2].from",
        "a soup phase starts from another phase; set `from`",
    ),
    (
        "dpo-without-parent",
        lambda d: phase(d, 4).pop("from"),
        "spec.phases[4].from",
        "a dpo phase starts from another phase; set `from`",
    ),
    (
        "soup-of-one-seed",
        lambda d: phase(d, 1).update(seeds=[42]),
        "spec.phases[2].from",
        "soup averages the seeds of a fanned-out phase; 'anneal' has 1 seeds (need >= 2)",
    ),
    (
        "soup-of-no-seed",
        lambda d: phase(d, 1).pop("seeds"),
        "spec.phases[2].from",
        "soup averages the seeds of a fanned-out phase; 'anneal' has 0 seeds (need >= 2)",
    ),
    (
        "training-from-fan-out",
        lambda d: phase(d, 3).update({"from": "anneal"}),
        "spec.phases[3].from",
        "'anneal' fans out into 2 seeds, so it has no single final checkpoint; "
        "add a soup phase (kind: soup, from: anneal) and start from it",
    ),
    (
        "cycle",
        lambda d: phase(d, 0).update({"from": "rlvr"}),
        "spec.phases[0].from",
        "phase 'pretrain' depends on itself through 'rlvr'; break the cycle",
    ),
    # sft <-> dpo; rlvr (from dpo) is not on the cycle but can never start either
    (
        "cycle-of-two",
        lambda d: phase(d, 3).update({"from": "dpo"}),
        "spec.phases[3].from",
        "phase 'sft' depends on itself through 'dpo'; break the cycle",
    ),
    (
        "starts-from-a-cycle",
        lambda d: phase(d, 3).update({"from": "dpo"}),
        "spec.phases[5].from",
        "phase 'rlvr' starts from a cycle at 'dpo'; break the cycle",
    ),
    (
        "unnamed-phase-then-duplicate",
        lambda d: (phase(d, 0).pop("name"), phase(d, 5).update(name="anneal")),
        "spec.phases[5].name",
        "duplicate phase name 'anneal' (also spec.phases[1]); rename one",
    ),
    (
        "storage-scheme",
        lambda d: d["spec"]["storage"].update(uri="ftp://host/x"),
        "spec.storage.uri",
        "scheme 'ftp' is not supported; use one of ('s3', 'gs', 'gcs', 'file', 'memory')",
    ),
    (
        "seeds-repeat",
        lambda d: phase(d, 1).update(seeds=[42, 7, 42]),
        "spec.phases[1].seeds",
        "seeds repeat; list each seed once",
    ),
    (
        "seeds-17",
        lambda d: phase(d, 1).update(seeds=list(range(17))),
        "spec.phases[1].seeds",
        "expected at most 16 items, got 17",
    ),
    (
        "soup-with-seeds",
        lambda d: phase(d, 2).update(seeds=[1, 2]),
        "spec.phases[2].seeds",
        "a soup takes its ingredients from its parent's seeds; remove `seeds`",
    ),
    *[
        (
            f"soup-with-{field}",
            (lambda f, i: lambda d: phase(d, 2).update({f: phase(d, i)[f]}))(field, src),
            f"spec.phases[2].{field}",
            f"a soup does not train; remove `{field}`",
        )
        for field, src in [
            ("data", 0),
            ("optim", 0),
            ("schedule", 0),
            ("batch", 0),
            ("sft", 3),
            ("dpo", 4),
            ("rlvr", 5),
        ]
    ],
    (
        "pretrain-without-data",
        lambda d: phase(d, 0).pop("data"),
        "spec.phases[0].data",
        "a pretrain phase needs `data` (token-array sources)",
    ),
    (
        "anneal-without-data",
        lambda d: phase(d, 1).pop("data"),
        "spec.phases[1].data",
        "a anneal phase needs `data` (token-array sources)",
    ),
    (
        "no-budget",
        lambda d: phase(d, 1).pop("maxTokens"),
        "spec.phases[1].maxTokens",
        "set a budget: maxTokens (e.g. 50B) or maxSteps",
    ),
    (
        "no-batch",
        lambda d: phase(d, 0).pop("batch"),
        "spec.phases[0].batch",
        "set batch.globalBatchSize (instances per optimizer step)",
    ),
    *[
        (
            f"{kind}-without-settings",
            (lambda i, k: lambda d: phase(d, i).pop(k))(index, kind),
            f"spec.phases[{index}].{kind}",
            f"a {kind} phase needs its `{kind}` settings (data, ...)",
        )
        for index, kind in [(3, "sft"), (4, "dpo"), (5, "rlvr")]
    ],
    (
        "dpo-settings-in-sft",
        lambda d: phase(d, 3).update(dpo=phase(d, 4)["dpo"]),
        "spec.phases[3].dpo",
        "`dpo` settings belong to a dpo phase, not sft; remove them",
    ),
    (
        "sft-settings-in-pretrain",
        lambda d: phase(d, 0).update(sft=phase(d, 3)["sft"]),
        "spec.phases[0].sft",
        "`sft` settings belong to a sft phase, not pretrain; remove them",
    ),
    (
        "batch-not-divisible",
        lambda d: phase(d, 0)["batch"].update(globalBatchSize=12),
        "spec.phases[0].batch.globalBatchSize",
        "12 is not divisible by nodes x procsPerNode x microBatchSize = 1 x 2 x 4 = 8; use a multiple of 8",
    ),
    (
        "batch-not-divisible-3-nodes",
        lambda d: phase(d, 0).update(nodes=3),
        "spec.phases[0].batch.globalBatchSize",
        "16 is not divisible by nodes x procsPerNode x microBatchSize = 3 x 2 x 4 = 24; use a multiple of 24",
    ),
    (
        "inherit-without-parent",
        lambda d: phase(d, 0)["optim"].update(lr="inherit"),
        "spec.phases[0].optim.lr",
        "`inherit` takes the LR where the parent stopped; set `from` or a number",
    ),
    (
        "sequence-too-long",
        lambda d: phase(d, 0)["data"].update(sequenceLength=129),
        "spec.phases[0].data.sequenceLength",
        "129 exceeds the model's maxSequenceLength 128; shorten it or raise the model's",
    ),
    (
        "sft-without-batch",
        lambda d: phase(d, 3).pop("batch"),
        "spec.phases[3].batch",
        "set batch.globalBatchSize (sequences or pairs per optimizer step)",
    ),
    *[
        (
            f"{kind}-longer-than-the-model",
            (lambda i, k: lambda d: phase(d, i)[k]["data"].update(maxLength=129))(index, kind),
            f"spec.phases[{index}].{kind}.data.maxLength",
            "129 exceeds the model's maxSequenceLength 128; shorten it or raise the model's",
        )
        for index, kind in [(3, "sft"), (4, "dpo")]
    ],
    (
        "memory-GB",
        lambda d: d["spec"]["cluster"].update(memory="16GB"),
        "spec.cluster.memory",
        f"'16GB' is not a Kubernetes quantity: {QUANTITY_HINT}'1600Gi'",
    ),
    (
        "cpu-list",
        lambda d: d["spec"]["cluster"].update(cpu=[4]),
        "spec.cluster.cpu",
        f"[4] is not a Kubernetes quantity: {QUANTITY_HINT}'96'",
    ),
    (
        "cpu-negative",
        lambda d: d["spec"]["cluster"].update(cpu=-1),
        "spec.cluster.cpu",
        f"-1 is not a Kubernetes quantity: {QUANTITY_HINT}'96'",
    ),
    (
        "cpu-bool",
        lambda d: d["spec"]["cluster"].update(cpu=True),
        "spec.cluster.cpu",
        f"True is not a Kubernetes quantity: {QUANTITY_HINT}'96'",
    ),
    (
        "cpu-fraction",
        lambda d: d["spec"]["cluster"].update(cpu=1.5),
        "spec.cluster.cpu",
        f"1.5 is not a Kubernetes quantity as written (a bare fraction): quote it, or {QUANTITY_HINT}'96'",
    ),
    (
        "shm-suffix",
        lambda d: d["spec"]["cluster"].update(shmSize="1gi"),
        "spec.cluster.shmSize",
        f"'1gi' is not a Kubernetes quantity: {QUANTITY_HINT}'64Gi'",
    ),
    (
        "unknown-kind",
        lambda d: phase(d, 0).update(kind="pretraining"),
        "spec.phases[0].kind",
        "expected one of pretrain, anneal, soup, sft, dpo, rlvr, got 'pretraining'; did you mean 'pretrain'?",
    ),
    (
        "unknown-field",
        lambda d: d["spec"].update(colour="red"),
        "spec.colour",
        "unknown field; did you mean `cluster`?",
    ),
    ("missing-field", lambda d: d["spec"].pop("image"), "spec.image", "required field is missing; add it"),
    (
        "negative-seed",
        lambda d: d["spec"].update(seed=-1),
        "spec.seed",
        "must be >= 0, got -1",
    ),
    (
        "zero-nodes",
        lambda d: phase(d, 0).update(nodes=0),
        "spec.phases[0].nodes",
        "must be > 0, got 0",
    ),
]


@pytest.mark.parametrize(("edit", "path", "message"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_every_rule_rejects_its_bad_input(edit: Edit, path: str, message: str) -> None:
    document = tiny()
    assert problems_of(document) == {}
    edit(document)
    found = problems_of(document)
    assert path in found, found
    assert found[path] == message
    with pytest.raises(api.SpecError) as error:
        api.parse_olmorun(document)
    assert f"{path}: {message}" in str(error.value)


# (edit that sits exactly on a limit and must be accepted)
LIMITS: list[tuple[str, Edit]] = [
    ("name-63-chars", lambda d: d["metadata"].update(name="a" * 63)),
    ("name-1-char", lambda d: d["metadata"].update(name="a")),
    ("phase-name-40-chars", lambda d: phase(d, 5).update(name="r" * 40)),
    ("soup-of-two-seeds", lambda d: phase(d, 1).update(seeds=[1, 2])),
    ("sixteen-seeds", lambda d: phase(d, 1).update(seeds=list(range(16)))),
    ("batch-one-step", lambda d: phase(d, 0)["batch"].update(globalBatchSize=8)),
    ("sequence-at-the-model-limit", lambda d: phase(d, 0)["data"].update(sequenceLength=128)),
    ("steps-instead-of-tokens", lambda d: (phase(d, 1).pop("maxTokens"), phase(d, 1).update(maxSteps=3))),
    ("plain-path-storage", lambda d: d["spec"]["storage"].update(uri="/data/olmorun")),
    ("memory-storage", lambda d: d["spec"]["storage"].update(uri="memory://x")),
    ("seed-zero", lambda d: d["spec"].update(seed=0)),
    ("cpu-zero", lambda d: d["spec"]["cluster"].update(cpu=0)),
    ("storage-uri-with-two-schemes", lambda d: d["spec"]["storage"].update(uri="s3://bucket/copy-of-gs://x")),
    ("max-length-at-the-model-limit", lambda d: phase(d, 3)["sft"]["data"].update(maxLength=128)),
]


@pytest.mark.parametrize("edit", [e for _, e in LIMITS], ids=[n for n, _ in LIMITS])
def test_values_on_the_limits_are_accepted(edit: Edit) -> None:
    document = tiny()
    edit(document)
    assert problems_of(document) == {}


def test_a_path_is_reported_once_even_when_two_checks_fail_on_it() -> None:
    document = tiny()
    phase(document, 5).update(name="R" * 41)  # too long for pydantic, and no DNS label either
    found = api.check_olmorun(document)
    assert [(p.path, p.message) for p in found if p.path == "spec.phases[5].name"] == [
        ("spec.phases[5].name", "expected at most 40 characters, got 41")
    ]


def test_union_labels_never_appear_in_a_path() -> None:
    document = tiny()
    phase(document, 1)["optim"]["lr"] = None  # a number or 'inherit': pydantic tries both
    found = api.check_olmorun(document)
    assert {p.path for p in found} == {"spec.phases[1].optim.lr"}
    assert [p.message for p in found] == ["expected a number or 'inherit', got None"]  # one problem


@pytest.mark.parametrize(
    ("document", "kind"), [(None, "NoneType"), ([], "list"), ("text", "str"), (3, "int")]
)
def test_a_document_that_is_no_mapping(document: Any, kind: str) -> None:
    with pytest.raises(api.SpecError) as error:
        api.parse_olmorun(document)
    [problem] = error.value.problems
    assert (problem.path, problem.message) == ("(document)", f"an OlmoRun is a mapping, got {kind}")
    assert str(error.value) == f"(document): an OlmoRun is a mapping, got {kind}"


def test_topological_order_puts_parents_first_and_keeps_spec_order_otherwise() -> None:
    document = tiny()
    phases = document["spec"]["phases"]
    document["spec"]["phases"] = [phases[3], phases[2], phases[0], phases[1]]  # sft, soup, pretrain, anneal
    run = api.parse_olmorun(document)
    assert [p.name for p in api.topological_order(run)] == ["pretrain", "anneal", "soup", "sft"]
    branches = tiny()
    branches["spec"]["phases"] = [
        phases[0],
        {**phases[1], "name": "b"},
        {**phases[1], "name": "a", "seeds": []},
    ]
    run = api.parse_olmorun(branches)
    assert [p.name for p in api.topological_order(run)] == ["pretrain", "b", "a"]


def test_run_accessors() -> None:
    run = api.parse_olmorun(tiny())
    assert (run.name, run.namespace) == ("olmo2-tiny", "default")
    assert run.phase("soup").kind == "soup"
    with pytest.raises(KeyError, match="nope"):
        run.phase("nope")
    assert run.spec.cluster.procs == 2
    assert api.ClusterSpec(gpus_per_node=8).procs == 8
    assert api.ClusterSpec(gpus_per_node=0).procs == 1


@pytest.mark.parametrize(
    ("written", "stored"), [(4, "4"), (0, "0"), ("500m", "500m"), ("1.5", "1.5"), ("2e3", "2e3")]
)
def test_a_quantity_is_stored_as_the_api_server_stores_it(written: Any, stored: str) -> None:
    document = tiny()
    document["spec"]["cluster"]["cpu"] = written
    assert api.parse_olmorun(document).spec.cluster.cpu == stored


def test_union_labels_are_left_out_even_when_the_value_is_a_mapping() -> None:
    document = tiny()
    phase(document, 1)["optim"]["lr"] = {"x": 1}  # pydantic's locs end in `float` / `literal['inherit']`
    assert {p.path for p in api.check_olmorun(document)} == {"spec.phases[1].optim.lr"}


def test_topological_order_refuses_a_cycle_that_bypassed_validation() -> None:
    run = api.parse_olmorun(tiny())
    run.spec.phases[0] = run.spec.phases[0].model_copy(update={"from_": "rlvr"})
    with pytest.raises(ValueError, match=r"^phases form a cycle$"):
        api.topological_order(run)
