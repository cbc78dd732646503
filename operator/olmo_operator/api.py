"""The OlmoRun API: pydantic spec and status, the single source of truth.

The CRD (crd.py), the reference (docs/reference.md), `olmorun validate` and the operator's parsing all
derive from these models. Python names are snake_case; the wire format is camelCase (Kubernetes convention).

    run = parse_olmorun(yaml.safe_load(text))      # raises SpecError with every problem at once
    problems = check_olmorun(document)             # the same, as a list
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from olmo_operator import spec_problems
from olmo_operator.pod_template import template_problems
from olmo_trainer.config import (
    POST_TRAINING_KINDS,
    BatchConfig,
    CheckpointConfig,
    ConfigModel,
    DataConfig,
    DPOConfig,
    EvalConfig,
    ModelSpec,
    OptimConfig,
    ParallelConfig,
    PhaseKind,
    RLVRConfig,
    ScheduleConfig,
    SFTConfig,
    Tokens,
    batch_split_problem,
    rlvr_batch_problem,
)

GROUP = "olmorun.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "OlmoRun"
PLURAL = "olmoruns"
SINGULAR = "olmorun"
SHORT_NAMES = ("olmo",)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
STORAGE_SCHEMES = ("s3", "gs", "gcs", "file", "memory")
MAX_NODES = 5000
"""The largest cluster Kubernetes supports (kubernetes.io/docs/setup/best-practices/cluster-large)."""


# ---------------------------------------------------------------------------------------------
# Kubernetes resource quantities
# ---------------------------------------------------------------------------------------------

QUANTITY_PATTERN = r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]{1,2}))?$"
"""The grammar of a Kubernetes resource quantity, without a minus sign (requests are never negative):
a decimal number, then an optional binary suffix Ki..Ei, decimal suffix n|u|m|k|M|G|T|P|E or an
integer exponent e<n> (k8s.io/apimachinery pkg/api/resource/quantity.go, parseQuantityString: the
exponent takes digits only, stricter than the pattern kubebuilder emits; we also bound it to two
digits, far beyond any request, where Python's Decimal in parse_quantity would overflow). The CRD
schema carries it as `pattern` (with `minimum: 0` for unquoted integers) and pydantic checks it: both
doors agree. `launcher.py` reads the values with kubernetes.utils.parse_quantity."""
_QUANTITY = re.compile(QUANTITY_PATTERN)


def check_quantity(value: Any, example: str) -> str:
    """A quantity as the API server stores it (a string); an unquoted integer is accepted as its digits.

    Raises ValueError naming a valid example for anything else (`16GB`, a float, a negative number).
    """
    hint = (
        f"write a number with an optional suffix Ki/Mi/Gi/Ti (powers of 1024), k/M/G/T (powers of "
        f"1000) or m (thousandths), e.g. {example!r}"
    )
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, float):
        raise ValueError(
            f"{value!r} is not a Kubernetes quantity as written (a bare fraction): quote it, or {hint}"
        )
    if isinstance(value, str) and _QUANTITY.match(value):
        return value
    raise ValueError(f"{value!r} is not a Kubernetes quantity: {hint}")


_QUANTITY_SCHEMA = WithJsonSchema(
    {"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN, "minimum": 0}
)
CpuQuantity = Annotated[str, BeforeValidator(partial(check_quantity, example="96")), _QUANTITY_SCHEMA]
MemoryQuantity = Annotated[str, BeforeValidator(partial(check_quantity, example="1600Gi")), _QUANTITY_SCHEMA]
ShmQuantity = Annotated[str, BeforeValidator(partial(check_quantity, example="64Gi")), _QUANTITY_SCHEMA]


# ---------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------


class SecretRef(ConfigModel):
    """A Secret in the run's namespace; its keys become environment variables of the jobs."""

    name: str = Field(min_length=1, max_length=253, json_schema_extra={"pattern": DNS_SUBDOMAIN.pattern})
    """Secret name. Its keys, for storage: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
    (or GOOGLE_APPLICATION_CREDENTIALS); for wandb: WANDB_API_KEY."""

    @field_validator("name")
    @classmethod
    def _secret_name(cls, name: str) -> str:
        if not DNS_SUBDOMAIN.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a Secret name: lowercase letters, digits, '-' and '.' (kubectl get secrets)"
            )
        return name


class StorageSpec(ConfigModel):
    """Object storage that holds configs, checkpoints, metrics and exports of the run."""

    uri: str = Field(min_length=1)
    """Root URI: s3://bucket/prefix, gs://bucket/prefix, or file:///path (local runs)."""
    secret_ref: SecretRef | None = None
    """Credentials for the storage, never inline."""
    endpoint_url: str | None = None
    """S3-compatible endpoint (MinIO, SeaweedFS, R2); empty for AWS."""
    scratch_uri: str | None = None
    """Where jobs write checkpoints while training (a shared filesystem or bucket); defaults to `uri`.
    Final checkpoints are always archived, verified, under `uri`."""


class Toleration(ConfigModel):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = None
    """The taint key this toleration matches; empty with operator Exists matches every key."""
    operator: Literal["Exists", "Equal"] | None = None
    """Equal (the default) matches the taint's value; Exists matches any value."""
    value: str | None = None
    """The taint value to match when the operator is Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """The taint effect to match; empty matches every effect."""
    toleration_seconds: int | None = None
    """With NoExecute: how long the pod stays bound after the taint appears; empty means forever."""


class PodTemplateMetadata(ConfigModel):
    """Labels and annotations added to every training pod (Kueue, cost tags, a service mesh opt-out)."""

    labels: dict[str, str] = Field(default_factory=dict)
    """Pod labels; the operator's own labels keep their values."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Pod annotations."""


class PodTemplateOverlay(ConfigModel):
    """A strategic-merge overlay onto every training pod (pod_template.py says how it merges)."""

    metadata: PodTemplateMetadata | None = None
    """Labels and annotations of the pods."""
    spec: dict[str, Any] = Field(default_factory=dict)
    """A core/v1 PodSpec fragment: env, volumes and volumeMounts, resources of any name, imagePullSecrets,
    tolerations, ... The container named `trainer` is the training container. The merged pod must meet the
    Pod Security "restricted" profile."""


class ClusterSpec(ConfigModel):
    """Where and how the jobs are placed."""

    gpus_per_node: int = Field(default=8, ge=0)
    """GPUs each node (pod) requests; 0 runs on CPU."""
    procs_per_node: int | None = Field(default=None, gt=0)
    """Training processes per node; defaults to gpusPerNode (1 on CPU)."""
    cpu: CpuQuantity | None = None
    """CPU request per pod, a Kubernetes quantity: '96', 96 or '500m'."""
    memory: MemoryQuantity | None = None
    """Memory request per pod, a Kubernetes quantity, e.g. '1600Gi' (not '1600GB')."""
    shm_size: ShmQuantity = "64Gi"
    """Size of the memory-backed /dev/shm volume (data-loader workers and NCCL need it)."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels a training pod's node must carry (e.g. the GPU node pool's label)."""
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: dict[str, Any] = Field(default_factory=dict)
    """core/v1 Affinity, passed through unchanged."""
    queue: str = "default"
    """Volcano queue."""
    priority_class_name: str | None = None
    """PriorityClass of the training pods (Volcano preempts lower priorities first)."""
    service_account_name: str | None = None
    """Service account of the training pods (e.g. for workload identity)."""
    pod_template: PodTemplateOverlay | None = None
    """Overlay onto every training pod: env (NCCL_*), volumes (a PVC dataset), RDMA resources, labels,
    annotations, imagePullSecrets (examples/podtemplate-*.yaml)."""

    @property
    def procs(self) -> int:
        return self.procs_per_node or max(self.gpus_per_node, 1)


class WandbSpec(ConfigModel):
    """Weights & Biases tracking; offline unless the Secret provides WANDB_API_KEY.

    Without this block no job starts a W&B run. Each job is one W&B run, grouped by the OlmoRun and
    typed by its phase (as OLMo-core's WandBCallback names `group` and `job_type`); an offline run is
    kept with the job's records in storage (`<save dir>/wandb/`) for `wandb sync`."""

    project: str = Field(min_length=1)
    """W&B project of every job of the run."""
    entity: str | None = None
    """W&B entity (user or team); empty: the API key's default entity."""
    group: str | None = Field(default=None, min_length=1, max_length=128)
    """W&B group of the run's jobs; empty: the OlmoRun's name, so one run's jobs are one group."""
    tags: list[str] = Field(default_factory=list, max_length=32)
    """W&B tags of every job; each job also gets its phase kind (`pretrain`, `sft`, ...) as a tag."""
    secret_ref: SecretRef | None = None


class TrackingSpec(ConfigModel):
    """Experiment tracking of every job (metrics.jsonl is always written to storage)."""

    wandb: WandbSpec | None = None


class RetryPolicy(ConfigModel):
    """Retries of a failed job; every retry resumes from the newest committed checkpoint."""

    backoff_limit: int = Field(default=3, ge=0)
    """Retries per job before the phase fails."""
    backoff_seconds: int = Field(default=30, ge=0)
    """Delay before the first retry; doubles each time."""
    max_backoff_seconds: int = Field(default=3600, ge=0)
    """Upper bound of the delay."""
    hang_timeout_minutes: float | None = Field(default=None, gt=0, le=10080)
    """A running job whose metrics.jsonl gains no new step for this long is hung: cancelled, counted as
    a failure (reason Hung) and retried from its newest checkpoint. The clock starts when the job is
    first seen running, so allow for its start-up and its longest pause (a checkpoint, an evaluation).
    Unset: never."""


class PhaseSpec(ConfigModel):
    """One stage of the recipe. Phases form a DAG through `from`."""

    name: str = Field(min_length=1, max_length=40)
    """Unique DNS label, used in job names, labels and storage paths."""
    kind: PhaseKind
    """pretrain | anneal | soup | sft | dpo | rlvr."""
    from_: str | None = Field(default=None, alias="from")
    """Parent phase: start from its final checkpoint (soup: average its seeds)."""
    seeds: list[int] = Field(default_factory=list, max_length=16)
    """Fan out into one job per seed (data-order seeds of a soup). Empty: one job with the run seed."""
    nodes: int = Field(default=1, gt=0, le=MAX_NODES)
    """Nodes per job (at most 5000, the largest cluster Kubernetes supports)."""
    max_tokens: Tokens | None = None
    """Token budget, e.g. 50B or 3.9T."""
    max_steps: int | None = Field(default=None, gt=0)
    """Step budget (overrides maxTokens when both are set)."""
    data: DataConfig | None = None
    optim: OptimConfig | None = None
    schedule: ScheduleConfig | None = None
    batch: BatchConfig | None = None
    checkpoint: CheckpointConfig | None = None
    parallel: ParallelConfig | None = None
    sft: SFTConfig | None = None
    dpo: DPOConfig | None = None
    rlvr: RLVRConfig | None = None
    eval: EvalConfig | None = None
    """Evaluate the phase's final model (a soup: the averaged one); figures in status.phases.<p>.eval."""
    archive_final: bool = True
    """Copy the final checkpoint to `<run>/archive/`, verified, when the phase succeeds; the next phase
    starts from that copy. false: the next phase starts from the scratch checkpoint."""
    archive: bool | None = None
    """Deprecated: the old name of archiveFinal, still accepted (a Warning event says so)."""

    @model_validator(mode="before")
    @classmethod
    def _old_archive_name(cls, data: Any) -> Any:
        """Read the deprecated `archive` as archiveFinal (kept, so that deprecations() can name it)."""
        if not isinstance(data, dict) or not isinstance(data.get("archive"), bool):
            return data
        final = data.get("archiveFinal", data.get("archive_final"))
        if final is not None and final != data["archive"]:
            raise ValueError("archive (deprecated) and archiveFinal disagree: keep only archiveFinal")
        return {**data, "archiveFinal": data["archive"]}


class OlmoRunSpec(ConfigModel):
    """The whole recipe of one run."""

    image: str = Field(min_length=1)
    """Trainer image; pin by digest (@sha256:...) for reproducibility."""
    model: ModelSpec
    storage: StorageSpec
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    seed: int = Field(default=6198, ge=0)
    """Run seed (OLMo 2: 6198). Immutable."""
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    suspend: bool = False
    """Stop submitting; running jobs are cancelled and resume from their checkpoint when cleared."""
    phases: list[PhaseSpec] = Field(min_length=1, max_length=32)


# ---------------------------------------------------------------------------------------------
# Status (Kubernetes API conventions)
# ---------------------------------------------------------------------------------------------

PhaseState = Literal["Pending", "Running", "Retrying", "Succeeded", "Failed"]


class StatusModel(BaseModel):
    """Status objects are written by the operator: lenient on read, camelCase on the wire."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)


class Condition(StatusModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class JobStatus(StatusModel):
    """One job of a phase (one per seed when the phase fans out)."""

    name: str
    """Deterministic job name `<run>-<phase>[-s<seed>]-a<attempt>`."""
    seed: int
    state: PhaseState = "Pending"
    attempts: int = 0
    """Submissions of this job so far; the current one is named `...-a<attempts>`."""
    failures: int = 0
    """Failed attempts counted against spec.retry.backoffLimit (preemptions and lost jobs do not count)."""
    checkpoint: str | None = None
    """Newest committed checkpoint URI."""
    archive: str | None = None
    """Verified archive URI of the job's final checkpoint."""
    step: int | None = None
    tokens: int | None = None
    last_loss: float | None = None
    eval: dict[str, float] = Field(default_factory=dict)
    """Final evaluation of this job's model: {eval/<task>/<metric>: value}."""
    message: str = ""
    retry_at: str | None = None
    """When the next attempt is submitted (RFC 3339)."""
    progress_at: str | None = None
    """When the running attempt last advanced: first seen running, or a new step in its metrics (RFC 3339).
    The clock of spec.retry.hangTimeoutMinutes."""


class PhaseStatus(StatusModel):
    state: PhaseState = "Pending"
    attempts: int = 0
    """Submissions so far, over all jobs of the phase."""
    jobs: list[JobStatus] = Field(default_factory=list)
    checkpoint: str | None = None
    """The phase's final committed checkpoint (soup: the averaged one)."""
    archive: str | None = None
    """Verified archive URI of the final checkpoint."""
    step: int | None = None
    tokens: int | None = None
    last_loss: float | None = None
    eval: dict[str, float] = Field(default_factory=dict)
    """Final evaluation of the phase's model (its single job's; fanned-out jobs keep their own)."""
    message: str = ""
    spec_hash: str | None = None
    """Hash of the phase spec when it started; a later edit is refused."""
    started_at: str | None = None
    finished_at: str | None = None


RUN_STAGES = ("Pending", "Running", "Succeeded", "Failed", "Suspended", "Invalid")


class OlmoRunStatus(StatusModel):
    observed_generation: int | None = None
    stage: str | None = None
    """Where the run is: Pending | Running | Succeeded | Failed | Suspended | Invalid."""
    active_phases: list[str] = Field(default_factory=list)
    """The phases with jobs submitted or waiting to be retried now (topological order)."""
    conditions: list[Condition] = Field(default_factory=list)
    phases: dict[str, PhaseStatus] = Field(default_factory=dict)
    step: int | None = None
    """Step of the current stage (for `kubectl get -o wide`)."""
    tokens: int | None = None
    last_loss: float | None = None
    storage: str | None = None
    """Root URI of this run's files: <storage>/<namespace>/<run>."""

    @model_validator(mode="before")
    @classmethod
    def _old_stage(cls, data: Any) -> Any:
        """Statuses written before activePhases held the running phases in `stage` ("pretrain,anneal")."""
        if isinstance(data, dict) and data.get("stage") not in (None, *RUN_STAGES):
            old = str(data["stage"])
            data = {**data, "stage": "Running", "activePhases": data.get("activePhases") or old.split(",")}
        return data


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class OlmoRun(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["olmorun.dev/v1alpha1"] = Field(default="olmorun.dev/v1alpha1", alias="apiVersion")
    kind: Literal["OlmoRun"] = "OlmoRun"
    metadata: ObjectMeta
    spec: OlmoRunSpec
    status: OlmoRunStatus = Field(default_factory=OlmoRunStatus)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    def phase(self, name: str) -> PhaseSpec:
        """The phase called `name`. Raises KeyError when the spec has none."""
        for phase in self.spec.phases:
            if phase.name == name:
                return phase
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# Validation: every problem at once, each with its field path and a fix
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecError(ValueError):
    """An OlmoRun that cannot be accepted; `problems` names every field at fault."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def _loc_to_path(loc: Iterable[int | str], document: Any, *, missing: bool = False) -> str:
    """The document path of a pydantic error location, e.g. `spec.phases[1].optim.lr`.

    Only keys and indices that exist in the document are kept (plus the last key of a `missing`
    field): pydantic also puts labels of union members and validators in `loc` (`float`,
    `literal['inherit']`, `function-after[...]`), which name no field a user could find."""
    parts = list(loc)
    path, node = "", document
    for i, part in enumerate(parts):
        in_dict = isinstance(node, dict) and part in node
        if in_dict or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            node = node[part]
        elif missing and i == len(parts) - 1 and isinstance(node, dict):
            node = None
        else:
            continue
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "(document)"


def _pydantic_problems(error: ValidationError, document: Any) -> list[Problem]:
    """Each of pydantic's errors once, in our words, with "did you mean" (spec_problems.describe)."""
    return [
        Problem(path, message)
        for path, message in spec_problems.describe(
            error.errors(), lambda loc, missing: _loc_to_path(loc, document, missing=missing), OlmoRun
        )
    ]


def _job_world(phase: PhaseSpec, cluster: ClusterSpec) -> int:
    return phase.nodes * cluster.procs


def _raw_phases(document: dict[str, Any]) -> list[dict[str, Any]]:
    spec = document.get("spec")
    phases = spec.get("phases") if isinstance(spec, dict) else None
    if not isinstance(phases, list):
        return []
    return [p if isinstance(p, dict) else {} for p in phases]


def graph_problems(document: dict[str, Any]) -> list[Problem]:
    """Names and the phase DAG, checked on the raw document so they are reported even when other
    fields have type errors: DNS names, unique phases, `from` targets, cycles, parents, fan-in."""
    problems: list[Problem] = []
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if isinstance(name, str) and (not DNS_LABEL.fullmatch(name) or len(name) > 63):
        problems.append(
            Problem(
                "metadata.name",
                f"{name!r} must be a DNS label: lowercase letters, digits and '-', at most 63",
            )
        )
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    if namespace is not None and (
        not isinstance(namespace, str) or not DNS_LABEL.fullmatch(namespace) or len(namespace) > 63
    ):
        problems.append(
            Problem(
                "metadata.namespace",
                f"{namespace!r} must be a DNS label: lowercase letters, digits and '-', at most 63",
            )
        )
    problems += location_problems(document)
    phases = _raw_phases(document)
    names = [p.get("name") if isinstance(p.get("name"), str) else None for p in phases]
    parents = [p.get("from") if isinstance(p.get("from"), str) else None for p in phases]
    kinds = [p.get("kind") if isinstance(p.get("kind"), str) else None for p in phases]
    by_name: dict[str, int] = {}
    for i, phase_name in enumerate(names):
        where = f"spec.phases[{i}]"
        if phase_name is None:
            continue
        if not DNS_LABEL.fullmatch(phase_name):
            problems.append(
                Problem(f"{where}.name", f"{phase_name!r} must be a DNS label (lowercase, digits, '-')")
            )
        if phase_name in by_name:
            first = by_name[phase_name]
            problems.append(
                Problem(
                    f"{where}.name",
                    f"duplicate phase name {phase_name!r} (also spec.phases[{first}]); rename one",
                )
            )
        else:
            by_name[phase_name] = i
    for i, parent in enumerate(parents):
        where = f"spec.phases[{i}]"
        kind = kinds[i]
        if parent is not None and parent not in by_name:
            problems.append(
                Problem(f"{where}.from", f"no phase named {parent!r}; choose one of {sorted(by_name)}")
            )
        if parent is None and kind in POST_TRAINING_KINDS | {"anneal", "soup"}:
            problems.append(Problem(f"{where}.from", f"a {kind} phase starts from another phase; set `from`"))
        if parent in by_name:
            seeds = phases[by_name[parent]].get("seeds")
            count = len(seeds) if isinstance(seeds, list) else 0
            if kind == "soup" and count < 2:
                problems.append(
                    Problem(
                        f"{where}.from",
                        f"soup averages the seeds of a fanned-out phase; {parent!r} has {count} seeds "
                        "(need >= 2)",
                    )
                )
            elif kind != "soup" and count >= 2:
                problems.append(
                    Problem(
                        f"{where}.from",
                        f"{parent!r} fans out into {count} seeds, so it has no single final checkpoint; "
                        f"add a soup phase (kind: soup, from: {parent}) and start from it",
                    )
                )
        seen = {names[i]}
        current = parent
        while current is not None and current in by_name:
            if current in seen:
                # A phase on the cycle, or one that starts from a phase on it: both never start.
                problems.append(
                    Problem(f"{where}.from", f"phase {names[i]!r} starts from itself; name another phase")
                    if parent == names[i]
                    else Problem(
                        f"{where}.from",
                        f"phase {names[i]!r} depends on itself through {parent!r}; break the cycle",
                    )
                    if current == names[i]
                    else Problem(
                        f"{where}.from",
                        f"phase {names[i]!r} starts from a cycle at {current!r}; break the cycle",
                    )
                )
                break
            seen.add(current)
            current = parents[by_name[current]]
    return problems


_PERCENT_DOT = re.compile(r"%2e", re.IGNORECASE)


def _climbs(text: str) -> bool:
    """Whether a path or URI has a `..` segment, written plainly or percent-encoded (`%2e%2e`,
    `%252e%252e`)."""
    decoded = _PERCENT_DOT.sub(".", text.replace("%25", "%"))
    return ".." in re.split(r"[/\\]", decoded)


def location_problems(document: dict[str, Any]) -> list[Problem]:
    """Storage roots and data locations that would reach outside what they name: a `..` segment
    anywhere in the spec (plain or percent-encoded), and a storage root that is a relative path."""
    problems: list[Problem] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")
        elif isinstance(node, str) and _climbs(node):
            problems.append(
                Problem(path, f"{node!r} has a '..' segment (path traversal); write the location in full")
            )

    spec = document.get("spec")
    walk(spec, "spec")
    storage = spec.get("storage") if isinstance(spec, dict) else None
    for key in ("uri", "scratchUri"):
        root = storage.get(key) if isinstance(storage, dict) else None
        if isinstance(root, str) and root and "://" not in root and not root.startswith("/"):
            problems.append(
                Problem(
                    f"spec.storage.{key}",
                    f"{root!r} is a relative path; write an absolute path or a URI (file:///..., s3://...)",
                )
            )
    return problems


def semantic_problems(run: OlmoRun) -> list[Problem]:
    """Checks on a well-typed run that types cannot express: budgets, data, batch divisibility."""
    problems: list[Problem] = []
    spec = run.spec
    scheme = spec.storage.uri.split("://", 1)[0] if "://" in spec.storage.uri else "file"
    if scheme not in STORAGE_SCHEMES:
        problems.append(
            Problem("spec.storage.uri", f"scheme {scheme!r} is not supported; use one of {STORAGE_SCHEMES}")
        )
    if spec.cluster.pod_template is not None:
        overlay = spec.cluster.pod_template.model_dump(by_alias=True, exclude_none=True)
        problems += [Problem(path, message) for path, message in template_problems(overlay)]
    for i, phase in enumerate(spec.phases):
        problems += _phase_problems(run, i, phase)
    return problems


def _phase_problems(run: OlmoRun, i: int, phase: PhaseSpec) -> list[Problem]:
    where = f"spec.phases[{i}]"
    spec = run.spec
    out: list[Problem] = []
    if len(set(phase.seeds)) != len(phase.seeds):
        out.append(Problem(f"{where}.seeds", "seeds repeat; list each seed once"))
    if phase.kind == "soup":
        if phase.seeds:
            out.append(
                Problem(
                    f"{where}.seeds", "a soup takes its ingredients from its parent's seeds; remove `seeds`"
                )
            )
        for field in ("data", "optim", "schedule", "batch", "sft", "dpo", "rlvr"):  # eval is allowed
            if getattr(phase, field) is not None:
                out.append(Problem(f"{where}.{field}", f"a soup does not train; remove `{field}`"))
        return out
    if phase.kind in ("pretrain", "anneal"):
        if phase.data is None:
            out.append(Problem(f"{where}.data", f"a {phase.kind} phase needs `data` (token-array sources)"))
        if phase.max_tokens is None and phase.max_steps is None:
            out.append(Problem(f"{where}.maxTokens", "set a budget: maxTokens (e.g. 50B) or maxSteps"))
        if phase.batch is None:
            out.append(Problem(f"{where}.batch", "set batch.globalBatchSize (instances per optimizer step)"))
    if phase.kind in POST_TRAINING_KINDS and getattr(phase, phase.kind) is None:
        out.append(
            Problem(
                f"{where}.{phase.kind}", f"a {phase.kind} phase needs its `{phase.kind}` settings (data, ...)"
            )
        )
    if phase.kind in POST_TRAINING_KINDS and phase.batch is None:
        out.append(
            Problem(f"{where}.batch", "set batch.globalBatchSize (sequences or pairs per optimizer step)")
        )
    post = getattr(phase, phase.kind, None) if phase.kind in POST_TRAINING_KINDS else None
    model_max = spec.model.resolve().max_sequence_length
    if post is not None and post.data.max_length > model_max:
        out.append(
            Problem(
                f"{where}.{phase.kind}.data.maxLength",
                f"{post.data.max_length} exceeds the model's maxSequenceLength {model_max}; shorten it or "
                "raise the model's",
            )
        )
    for other in POST_TRAINING_KINDS - {phase.kind}:
        if getattr(phase, other) is not None:
            out.append(
                Problem(
                    f"{where}.{other}",
                    f"`{other}` settings belong to a {other} phase, not {phase.kind}; remove them",
                )
            )
    if phase.kind == "rlvr":
        out += _rlvr_problems(run, where, phase)
    elif phase.batch is not None:
        world = _job_world(phase, spec.cluster)
        per_step = world * phase.batch.micro_batch_size
        # The trainer's rule (config.batch_split_problem), said here in the spec's own terms.
        if (
            batch_split_problem(phase.batch.global_batch_size, phase.batch.micro_batch_size, world)
            is not None
        ):
            out.append(
                Problem(
                    f"{where}.batch.globalBatchSize",
                    f"{phase.batch.global_batch_size} is not divisible by nodes x procsPerNode x "
                    "microBatchSize = "
                    f"{phase.nodes} x {spec.cluster.procs} x {phase.batch.micro_batch_size} = {per_step}; "
                    f"use a multiple of {per_step}",
                )
            )
    if phase.optim is not None and phase.optim.lr == "inherit" and phase.from_ is None:
        out.append(
            Problem(
                f"{where}.optim.lr", "`inherit` takes the LR where the parent stopped; set `from` or a number"
            )
        )
    max_len = spec.model.resolve().max_sequence_length
    if phase.data is not None and phase.data.sequence_length > max_len:
        out.append(
            Problem(
                f"{where}.data.sequenceLength",
                f"{phase.data.sequence_length} exceeds the model's maxSequenceLength {max_len}; shorten it "
                "or raise the model's",
            )
        )
    return out


def _rlvr_problems(run: OlmoRun, where: str, phase: PhaseSpec) -> list[Problem]:
    """An rlvr phase: a step budget, a batch of prompts that splits over its ranks, room for the
    response after the longest prompt."""
    out: list[Problem] = []
    if phase.max_steps is None:
        out.append(Problem(f"{where}.maxSteps", "an rlvr phase counts optimizer steps: set maxSteps"))
    if phase.max_tokens is not None:
        out.append(Problem(f"{where}.maxTokens", "an rlvr phase's budget is maxSteps; remove maxTokens"))
    if phase.batch is None or phase.rlvr is None:
        return out
    problem = rlvr_batch_problem(phase.rlvr, phase.batch, _job_world(phase, run.spec.cluster))
    if problem is not None:
        out.append(Problem(f"{where}.batch.{problem[0]}", problem[1]))
    model_max = run.spec.model.resolve().max_sequence_length
    longest = phase.rlvr.data.max_length + phase.rlvr.max_new_tokens
    if longest > model_max:
        out.append(
            Problem(
                f"{where}.rlvr.maxNewTokens",
                f"maxLength {phase.rlvr.data.max_length} + maxNewTokens {phase.rlvr.max_new_tokens} = "
                f"{longest} "
                f"exceeds the model's maxSequenceLength {model_max}; shorten the prompts or the responses",
            )
        )
    return out


def check_olmorun(document: Any) -> list[Problem]:
    """Every problem with a document, as a list (empty when it is a valid OlmoRun)."""
    try:
        parse_olmorun(document)
    except SpecError as error:
        return error.problems
    return []


def parse_olmorun(document: Any) -> OlmoRun:
    """Parse and validate an OlmoRun document (a dict from YAML/JSON). Raises SpecError."""
    if not isinstance(document, dict):
        raise SpecError([Problem("(document)", f"an OlmoRun is a mapping, got {type(document).__name__}")])
    problems = graph_problems(document)
    try:
        run = OlmoRun.model_validate(document)
    except ValidationError as error:
        found = _merge(_pydantic_problems(error, document), problems)
        repaired = spec_problems.repair(error.errors(), document, OlmoRun)
        if repaired is not None:  # what the typos hid (every problem at once): validate the corrected spec
            try:
                parse_olmorun(repaired)
            except SpecError as hidden:  # what a reported field's own correction would say is not news
                found += [p for p in hidden.problems if not any(_related(p.path, q.path) for q in found)]
        raise SpecError(found) from None
    problems += semantic_problems(run)
    if problems:
        raise SpecError(problems)
    return run


def _related(a: str, b: str) -> bool:
    """Whether one path is the other or inside it (`spec.phases[1].batch` and `...batch.globalBatchSize`)."""
    return a == b or a.startswith((b + ".", b + "[")) or b.startswith((a + ".", a + "["))


def _merge(first: list[Problem], second: list[Problem]) -> list[Problem]:
    """Both lists in order, without repeating a path already reported."""
    paths = {p.path for p in first}
    return first + [p for p in second if p.path not in paths]


def topological_order(run: OlmoRun) -> list[PhaseSpec]:
    """Phases parents-first (stable in spec order). Assumes a validated, acyclic spec.

    Raises ValueError when the phases form a cycle (parse_olmorun refuses such a spec first).
    """
    done: set[str] = set()
    ordered: list[PhaseSpec] = []
    pending = list(run.spec.phases)
    while pending:
        for phase in pending:
            if phase.from_ is None or phase.from_ in done:
                ordered.append(phase)
                done.add(phase.name)
                pending.remove(phase)
                break
        else:  # only reachable with a cycle, which validation rejects
            raise ValueError("phases form a cycle")
    return ordered


def deprecations(run: OlmoRun) -> list[str]:
    """One message per deprecated field the spec uses, naming the field and its replacement."""
    return [
        f"spec.phases[{index}].archive is deprecated: write archiveFinal (same meaning)"
        for index, phase in enumerate(run.spec.phases)
        if phase.archive is not None
    ]
