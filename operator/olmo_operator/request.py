"""JobRequest: everything a launcher needs to create one attempt of one job, built once from the spec. Pure.

    request = job_request(run, run.phase("anneal"), seed=42, attempt=1, config_uri=layout.config_uri(...))
    SubmitJob(..., request=request)             # the planner carries it; the launcher only reads it

A job is `placement.nodes` nodes x `placement.procs_per_node` processes, each running
`python <command>` under torchrun, i.e. `python -m olmo_trainer <kind> --config <config_uri>`. The
launchers (launcher_volcano.py, launcher_local.py) turn a request into a torchx AppDef; they decide
nothing about the run, and nothing here knows about torchx or Kubernetes clients. Values are plain
strings as the spec wrote them: quantities are not rounded, names are not escaped for torchx.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from olmo_operator import layout
from olmo_operator.api import API_VERSION, KIND, OlmoRun, PhaseSpec

LABEL_RUN = "olmorun.dev/run"
LABEL_PHASE = "olmorun.dev/phase"
LABEL_SEED = "olmorun.dev/seed"
LABEL_ATTEMPT = "olmorun.dev/attempt"
LABEL_RUN_UID = "olmorun.dev/run-uid"
MAX_LABEL_VALUE = 63
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
"""A Kubernetes label value: empty, or alphanumerics at both ends with `-_.` between (apimachinery
validation.IsValidLabelValue), at most MAX_LABEL_VALUE characters."""


def label_value(value: str) -> str:
    """`value` as a valid Kubernetes label value (pure, deterministic).

    A valid value is kept as it is (names the API has validated, seeds, attempts). Anything else (a
    negative seed, a phase name longer than 63, characters outside `[A-Za-z0-9._-]`) has each such
    character replaced by '-', its ends trimmed to alphanumerics, and is cut to leave room for `-`
    and 8 hex digits of the sha256 of the original: two different inputs never share a label.
    """
    if len(value) <= MAX_LABEL_VALUE and _LABEL_VALUE.fullmatch(value):
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", value)[: MAX_LABEL_VALUE - len(digest) - 1]
    cleaned = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)
    return f"{cleaned}-{digest}" if cleaned else digest


@dataclass(frozen=True)
class OwnerReference:
    """The OlmoRun that owns a job: deleting the run garbage-collects its jobs (Kubernetes)."""

    api_version: str
    kind: str
    name: str
    uid: str

    def to_kubernetes(self) -> dict[str, Any]:
        """The `metadata.ownerReferences[]` entry: the run is the controller and blocks deletion."""
        return {
            "apiVersion": self.api_version,
            "blockOwnerDeletion": True,
            "controller": True,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
        }


@dataclass(frozen=True)
class Resources:
    """What each node of the job asks for."""

    gpus: int
    cpu: str | None = None
    """A Kubernetes quantity exactly as the spec wrote it ('96', '500m'); None: no request."""
    memory: str | None = None
    """A Kubernetes quantity exactly as the spec wrote it ('1600Gi'); None: no request."""
    shm_size: str = "64Gi"
    """Size of the memory-backed /dev/shm (dataloader workers, NCCL)."""


@dataclass(frozen=True)
class Placement:
    """How many nodes and processes, and where they may run."""

    nodes: int
    procs_per_node: int
    queue: str = "default"
    """Volcano queue."""
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    affinity: dict[str, Any] = field(default_factory=dict)
    priority_class: str | None = None
    service_account: str | None = None
    pod_template: dict[str, Any] = field(default_factory=dict)
    """spec.cluster.podTemplate, merged into every pod (pod_template.merge_pod_template)."""


@dataclass(frozen=True)
class JobRequest:
    """One attempt of one job, ready to be created by any launcher."""

    name: str
    """Deterministic `<run>-<phase>[-s<seed>]-a<attempt>` (layout.job_name): a resubmission collides."""
    namespace: str
    labels: dict[str, str]
    owner: OwnerReference
    image: str
    command: list[str]
    """What each process runs under torchrun, after `python`: ['-m', 'olmo_trainer', kind, '--config',
    uri]."""
    env: dict[str, str]
    """Plain values (no credentials: those come from `secret_refs`)."""
    secret_refs: list[str]
    """Secrets whose keys become environment variables of every process (envFrom), never inline."""
    resources: Resources
    placement: Placement
    config_uri: str


def job_labels(run: OlmoRun, phase: PhaseSpec, seed: int, attempt: int) -> dict[str, str]:
    """The labels of a job and of its pods: run, phase, seed, attempt (and the run's uid when known),
    each value made a valid label value (label_value): they come from the user's spec."""
    labels = {
        LABEL_RUN: run.name,
        LABEL_PHASE: phase.name,
        LABEL_SEED: str(seed),
        LABEL_ATTEMPT: str(attempt),
    }
    if run.metadata.uid:
        labels[LABEL_RUN_UID] = run.metadata.uid
    return {key: label_value(value) for key, value in labels.items()}


def owner_reference(run: OlmoRun) -> OwnerReference:
    return OwnerReference(api_version=API_VERSION, kind=KIND, name=run.name, uid=run.metadata.uid or "")


def secret_names(run: OlmoRun) -> list[str]:
    """Secrets whose keys the jobs receive as environment variables (storage, then wandb), each once."""
    refs = [run.spec.storage.secret_ref]
    if run.spec.tracking.wandb is not None:
        refs.append(run.spec.tracking.wandb.secret_ref)
    names: list[str] = []
    for ref in refs:
        if ref is not None and ref.name not in names:
            names.append(ref.name)
    return names


def job_env(run: OlmoRun, phase: PhaseSpec, seed: int, attempt: int, config_uri: str) -> dict[str, str]:
    """Who this process is (run, phase, seed, attempt, config), and the storage endpoint when set."""
    env = {
        "OLMORUN_RUN": run.name,
        "OLMORUN_NAMESPACE": run.namespace,
        "OLMORUN_PHASE": phase.name,
        "OLMORUN_SEED": str(seed),
        "OLMORUN_ATTEMPT": str(attempt),
        "OLMORUN_CONFIG": config_uri,
        "OLMORUN_IMAGE": run.spec.image,  # recorded in the job's env.json (olmo_trainer.environment)
        "LOGLEVEL": "WARNING",
    }
    if run.spec.storage.endpoint_url:  # an address, not a credential: credentials come from Secrets
        env["AWS_ENDPOINT_URL"] = run.spec.storage.endpoint_url
    return env


def job_request(run: OlmoRun, phase: PhaseSpec, seed: int, attempt: int, config_uri: str) -> JobRequest:
    """The request of one attempt of one job of `phase` (pure).

    A soup averages on CPU in one process (one ingredient in memory at a time): one node, one process,
    no GPUs, whatever the phase's `nodes`. Every other kind runs `phase.nodes` x `cluster.procs`.
    """
    cluster = run.spec.cluster
    soup = phase.kind == "soup"
    return JobRequest(
        name=layout.job_name(run, phase, seed, attempt),
        namespace=run.namespace,
        labels=job_labels(run, phase, seed, attempt),
        owner=owner_reference(run),
        image=run.spec.image,
        command=["-m", "olmo_trainer", phase.kind, "--config", config_uri],
        env=job_env(run, phase, seed, attempt, config_uri),
        secret_refs=secret_names(run),
        resources=Resources(
            gpus=0 if soup else cluster.gpus_per_node,
            cpu=cluster.cpu,
            memory=cluster.memory,
            shm_size=cluster.shm_size,
        ),
        placement=Placement(
            nodes=1 if soup else phase.nodes,
            procs_per_node=1 if soup else cluster.procs,
            queue=cluster.queue,
            node_selector=dict(cluster.node_selector),
            tolerations=[t.model_dump(by_alias=True, exclude_none=True) for t in cluster.tolerations],
            affinity=dict(cluster.affinity),
            priority_class=cluster.priority_class_name,
            service_account=cluster.service_account_name,
            pod_template=(
                cluster.pod_template.model_dump(by_alias=True, exclude_none=True)
                if cluster.pod_template
                else {}
            ),
        ),
        config_uri=config_uri,
    )
