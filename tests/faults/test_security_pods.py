"""Every pod the operator creates meets Pod Security "restricted", and every label and annotation it
builds from user input is a valid Kubernetes label/annotation, whatever the input.

- every Volcano Job the planner would submit for each example spec and for a GPU spec (every phase,
  seed and kind, as `olmorun render` renders them) is checked pod template by pod template against the
  restricted profile (tests/deploy/pod_security.py: runAsNonRoot, no privilege escalation,
  capabilities drop ALL, seccomp RuntimeDefault, ...), and its labels and annotations against
  Kubernetes' syntax rules (an independent oracle written from apimachinery's validation);
- label_value keeps valid values, and makes any string (hypothesis: any text, long, hostile) a
  valid label value, deterministically and without collisions between different inputs;
- a spec the API accepts but whose values are no label values (a negative seed) renders a Job whose
  labels are all valid.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from olmo_operator import layout
from olmo_operator.api import OlmoRun, parse_olmorun
from olmo_operator.launcher_volcano import VolcanoLauncher
from olmo_operator.pod_security import restricted_problems
from olmo_operator.preview import preview_run
from olmo_operator.request import label_value
from tests.operator.test_launcher import GPU_SPEC

EXAMPLES = Path(__file__).parents[2] / "examples"
# apimachinery pkg/util/validation: IsQualifiedName (keys) and IsValidLabelValue (values).
_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def key_problems(key: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    problems = []
    if prefix and (len(prefix) > 253 or not _SUBDOMAIN.match(prefix)):
        problems.append(f"key {key!r}: prefix is not a DNS subdomain")
    if not name or len(name) > 63 or not _NAME.match(name):
        problems.append(f"key {key!r}: name is not a qualified name")
    return problems


def label_problems(labels: dict[str, str]) -> list[str]:
    problems = [p for key in labels for p in key_problems(key)]
    for key, value in labels.items():
        if not isinstance(value, str) or len(value) > 63 or (value and not _NAME.match(value)):
            problems.append(f"label {key}={value!r}: not a valid label value")
    return problems


def annotation_problems(annotations: dict[str, str]) -> list[str]:
    problems = [p for key in annotations for p in key_problems(key)]
    if sum(len(k) + len(v) for k, v in annotations.items()) > 256 * 1024:
        problems.append("annotations exceed 256 KiB")
    return problems


def metadata_problems(where: str, metadata: dict[str, Any]) -> list[str]:
    found = label_problems(metadata.get("labels") or {}) + annotation_problems(
        metadata.get("annotations") or {}
    )
    return [f"{where}: {p}" for p in found]


def rendered_jobs(run: OlmoRun) -> list[dict[str, Any]]:
    """Every Volcano Job the planner would submit for `run` (the first attempt of each job)."""
    launcher = VolcanoLauncher(run.namespace)
    return [launcher.render(submit.request) for submit in preview_run(run).submissions]


def runs() -> list[tuple[str, OlmoRun]]:
    found = [
        (path.name, parse_olmorun(yaml.safe_load(path.read_text())))
        for path in sorted(EXAMPLES.glob("*.yaml"))
    ]
    return [*found, ("gpu", parse_olmorun(GPU_SPEC))]


@pytest.mark.parametrize(("name", "run"), runs(), ids=[name for name, _ in runs()])
def test_every_pod_of_every_job_meets_the_restricted_profile(name: str, run: OlmoRun) -> None:
    jobs = rendered_jobs(run)
    kinds = {phase.kind for phase in run.spec.phases}
    assert len(jobs) >= len(run.spec.phases), name  # every phase reached a Job
    problems: list[str] = []
    for job in jobs:
        where = job["metadata"]["name"]
        problems += metadata_problems(where, job["metadata"])
        for task in job["spec"]["tasks"]:
            template = task["template"]
            problems += [f"{where}/{task['name']}: {p}" for p in restricted_problems(template)]
            problems += metadata_problems(f"{where}/{task['name']}", template.get("metadata") or {})
            for container in template["spec"]["containers"]:
                security = container["securityContext"]
                assert security["capabilities"]["drop"] == ["ALL"] and not security["capabilities"].get("add")
                assert security["allowPrivilegeEscalation"] is False
            pod = template["spec"]["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
            assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert problems == [], f"{name} ({sorted(kinds)}):\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "value", ["olmo2-7b", "42", "anneal", "0f1e2d3c-aaaa-bbbb-cccc-000000000001", "", "A.b_c"]
)
def test_valid_label_values_are_kept(value: str) -> None:
    assert label_value(value) == value


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_becomes_a_valid_label_value(text: str) -> None:
    value = label_value(text)
    assert label_problems({"olmorun.dev/x": value}) == [], (text, value)
    assert label_value(text) == value and label_value(value) == value  # deterministic, and stable


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=120), st.text(min_size=1, max_size=120))
def test_different_inputs_keep_different_labels(a: str, b: str) -> None:
    if a != b and (label_value(a) != a or label_value(b) != b):
        assert label_value(a) != label_value(b)


@pytest.mark.parametrize(
    "hostile",
    ["-5", "a" * 100, "../../etc", "x" * 63 + "-", "ü数据", "name with spaces", "trailing.", "%2e%2e"],
)
def test_hostile_values_become_valid_labels(hostile: str) -> None:
    value = label_value(hostile)
    assert label_problems({"olmorun.dev/phase": value}) == [] and len(value) <= 63


def test_a_spec_whose_values_are_no_label_values_renders_valid_labels() -> None:
    """The API accepts a negative data-order seed, which is no label value as it stands ('-5')."""
    spec = copy.deepcopy(GPU_SPEC)
    spec["spec"]["phases"][0].update(seeds=[-5, 7])
    run = parse_olmorun(spec)
    jobs = rendered_jobs(run)
    assert len(jobs) == 2
    for job in jobs:
        assert metadata_problems(job["metadata"]["name"], job["metadata"]) == []
        for task in job["spec"]["tasks"]:
            assert metadata_problems(task["name"], task["template"]["metadata"]) == []
        assert len(job["metadata"]["name"]) <= layout.MAX_JOB_NAME
    seeds = {job["metadata"]["labels"]["olmorun.dev/seed"] for job in jobs}
    assert "7" in seeds and len(seeds) == 2 and "-5" not in seeds
