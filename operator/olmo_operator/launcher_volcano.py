"""VolcanoLauncher: a JobRequest -> a Volcano Job through torchx's Kubernetes scheduler; describe, cancel.

    launcher = VolcanoLauncher(namespace="olmo", api_client=client)   # client: kubernetes.client.ApiClient
    job = launcher.render(request)              # the Volcano Job as a dict (no API call)
    launcher.submit(request); launcher.describe(request.name); launcher.cancel(request.name)

How the request reaches the Job, with torchx's own extension points:
- the Role (launcher.trainer_role): image, command, env, GPUs, the c10d port; `nodes` replicas with
  rendezvous on replica 0 (torchx's rank0_env macro);
- the role's pod overlay (torchx.specs.overlays): pod labels, the non-root security context, node
  selector, tolerations, affinity, priority class, the sized /dev/shm volume, and, merged into the
  one container of each pod (JOIN on its image), the container security context, the resources
  exactly as the spec writes them (torchx would round 1600Gi to 1717987M and subtract a reserve),
  and the Secrets as `envFrom` (never inline values);
- the scheduler's options (KubernetesOpts): queue, namespace, service account, priority class;
- the scheduler's request object (KubernetesJob, from submit_dryrun): the Job's metadata (the
  deterministic name, namespace, labels, ownerReference), and Volcano's own retries switched off
  (`maxRetry` and lifecycle `policies`, see VOLCANO_MAX_RETRY).
torchx cannot take a job name: it appends a random id (ids.make_unique) and also writes that id into
each pod's `app.kubernetes.io/instance` label, after the overlay. `_name_job` is the ONE place that
fixes what torchx lacks: it sets the metadata and replaces that one label with the job's name, so a
resubmission collides (409 Conflict, not an error) and is never duplicated. `_end_on_first_failure`
is the other one: torchx writes `maxRetry: 0`, which Volcano reads as 3 retries of its own.

describe reads a stopped Job as preemption (resubmitted without using the retry budget) when Volcano
ended it for a pod taken from outside (TerminateJob below: Terminated), or when a pod of a Failed Job
shows it was evicted (`status.reason: Evicted`, a `DisruptionTarget` condition) or exited 143. A Job a
person suspended with vcctl (Aborted) is neither: it waits, with a notice, until it is resumed.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import threading
from collections.abc import Iterator
from typing import Any

from torchx.schedulers.kubernetes_scheduler import (
    LABEL_UNIQUE_NAME,
    KubernetesJob,
    KubernetesOpts,
    KubernetesScheduler,
    sanitize_for_serialization,
)
from torchx.specs import AppDef, AppDryRunInfo, macros, runopts
from torchx.specs.overlays import JOIN, set_overlay

from olmo_operator.actions import JobObservation, ObservedState
from olmo_operator.launcher import RDZV_PORT, trainer_role
from olmo_operator.pod_template import merge_pod_template
from olmo_operator.request import JobRequest
from olmo_trainer.layout import EXIT_PREEMPTED

VOLCANO = {"group": "batch.volcano.sh", "version": "v1alpha1", "plural": "jobs"}
SHM_VOLUME = "dshm"
"""The name torchx gives its /dev/shm emptyDir; the overlay sizes it."""
RANK0_ENDPOINT = f"$${{{macros.rank0_env}:=localhost}}:{RDZV_PORT}"
"""Rank 0's host from the variable Volcano sets (torchx's rank0_env macro), as a shell expansion."""
TRAINER_UID = 1000
"""The unprivileged user of the trainer image; training pods never run as root."""
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": TRAINER_UID,
    "runAsGroup": TRAINER_UID,
    "fsGroup": TRAINER_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
}
"""Pod Security "restricted": no capability at all. An RDMA transport that pins memory then relies on
the container runtime's memlock limit, not on IPC_LOCK."""

_STATES: dict[str, ObservedState] = {
    "Pending": "Pending",
    "Running": "Running",
    "Restarting": "Running",
    "Completing": "Running",
    "Completed": "Succeeded",
    "Failed": "Failed",
    "Terminated": "Failed",
    "Aborted": "Pending",
}
_STOPPING = ("Terminating", "Aborting")
"""Volcano is deleting the Job's pods: not replaced until they are gone (one writer per save_dir)."""
_STOPPED_FROM_OUTSIDE = ("Terminated",)
SUSPENDED_OUTSIDE = "Aborted"
"""The phase of a Job someone suspended with `vcctl job suspend` (a bus Command with AbortJob: Aborting,
then Aborted; pkg/cli/job/suspend.go). None of our policies aborts (VOLCANO_POLICIES), so it always
comes from outside, and `vcctl job resume` (ResumeJob) starts it again. The job waits, with a notice:
resubmitting it as preempted would undo the person's suspend with a new attempt."""
EVICTED_REASONS = ("Evicted", "Preempting")
"""A pod's `status.reason` when the kubelet evicted it (node pressure) or a scheduler preempted it."""
DISRUPTION_TARGET = "DisruptionTarget"
"""The pod condition Kubernetes (>= 1.26) and Volcano's scheduler set on a pod about to be taken away:
reason EvictionByEvictionAPI (node drain), PreemptionByScheduler (Volcano: pkg/scheduler/cache/cache.go,
defaultEvictor.Evict), DeletionByTaintManager, DeletionByPodGC (its node is gone: spot reclaim),
TerminationByKubelet (node pressure)."""

VOLCANO_MAX_RETRY = 1
"""Volcano's job-level `maxRetry`: 1, so that Volcano itself never restarts a job; the planner decides.

Volcano's mutating webhook replaces 0, what torchx writes when a role has no retries, with its default 3
(volcano-sh/volcano pkg/webhooks/admission/jobs/mutate/mutate_job.go: patchDefaultMaxRetry,
DefaultMaxRetry = 3): `maxRetry: 0` means three restarts behind the planner's back. With 1, the
RestartJob of a failed pod finds `retryCount (1) >= maxRetry (1)` and marks the Job Failed at once
(pkg/controllers/job/state/restarting.go: restartingUpdateStatus); being the last retry, Volcano keeps
the Failed pods for their exit codes (job_controller_actions.go, killJob: lastRetry ->
PodRetainPhaseSoft) and creates no new pod (its PodGroup is gone, so syncJob only updates the status)."""
VOLCANO_POLICIES = (
    # The trainer saved a checkpoint after SIGTERM (a node drain evicts through SIGTERM): preempted.
    # An exitCode policy is matched before the event policies below (pkg/controllers/job/
    # job_controller_util.go, applyPolicies: job policies in order, exit code checked per policy).
    {"exitCode": EXIT_PREEMPTED, "action": "TerminateJob"},
    # A pod deleted from outside (drain, spot reclaim: its node is gone, Volcano's own preemption):
    # Volcano's PodEvicted event is any deletion of a pod it did not kill itself
    # (job_controller_handler.go, deletePod). Its default action, SyncJob, would create the pod again.
    {"event": "PodEvicted", "action": "TerminateJob"},
    # Any other pod failure ends the whole Job (a multi-node torchrun cannot continue without a rank):
    # RestartJob with maxRetry 1 is Failed at once (see VOLCANO_MAX_RETRY). Without it Volcano waits for
    # every pod to end (state/running.go) while the other ranks hang in a collective.
    {"event": "PodFailed", "action": "RestartJob"},
)
"""Volcano's job-level lifecycle policies (accepted by pkg/webhooks/admission/jobs/validate/util.go,
validatePolicies: event or exit code, never both, no duplicates)."""
CANNOT_START_REASONS = (
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
)
"""A container's `state.waiting.reason` when the kubelet cannot start it until someone fixes the cause."""


def pod_overlay(request: JobRequest) -> dict[str, Any]:
    """The torchx V1Pod overlay of every pod of the job (pure)."""
    placement, resources = request.placement, request.resources
    quantities = {k: v for k, v in (("cpu", resources.cpu), ("memory", resources.memory)) if v}
    if resources.gpus:
        quantities["nvidia.com/gpu"] = str(resources.gpus)
    container: dict[str, Any] = {
        "image": request.image,
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        "resources": {"limits": dict(quantities), "requests": dict(quantities)},
    }
    if request.secret_refs:
        container["envFrom"] = [{"secretRef": {"name": name}} for name in request.secret_refs]
    spec: dict[str, Any] = {
        "securityContext": dict(POD_SECURITY),
        # torchx mounts an unbounded memory emptyDir on /dev/shm; bound it.
        JOIN("volumes", on="name"): [
            {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": resources.shm_size}}
        ],
        # Each pod has one container, named per replica (trainer-<i>); the image is the same in all.
        JOIN("containers", on="image"): [container],
    }
    if placement.node_selector:
        spec["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        spec["tolerations"] = [dict(t) for t in placement.tolerations]
    if placement.affinity:
        spec["affinity"] = dict(placement.affinity)
    if placement.priority_class:
        spec["priorityClassName"] = placement.priority_class
    return {"metadata": {"labels": dict(request.labels)}, "spec": spec}


def app_def(request: JobRequest) -> AppDef:
    """The torchx AppDef of a job: `nodes` replicas x `procs_per_node` processes (pure)."""
    role = trainer_role(
        request,
        nnodes=request.placement.nodes,
        nproc=request.placement.procs_per_node,
        rdzv_endpoint=RANK0_ENDPOINT,
    )
    set_overlay(role, "kubernetes", "V1Pod", pod_overlay(request))
    return AppDef(name=request.name, roles=[role])


class _Scheduler(KubernetesScheduler):
    """torchx's Kubernetes scheduler, building its run options once.

    submit_dryrun resolves the options through run_opts(), which torchx rebuilds on every call from
    the source of its options dataclass (inspect.getsource + ast.parse of its docstrings): about 9 ms
    of CPU per job, three quarters of rendering one (bench/RESULTS.md). The options never change.
    """

    @functools.cached_property
    def _options(self) -> runopts:
        return super().run_opts()

    def run_opts(self) -> runopts:
        return self._options

    def _submit_dryrun(self, app: AppDef, cfg: Any) -> AppDryRunInfo[KubernetesJob]:
        with _one_model_configuration():
            return super()._submit_dryrun(app, cfg)


_MODELS_LOCK = threading.Lock()


@functools.cache
def _model_configuration() -> Any:
    """The one Configuration the models share, made without touching the process's log levels."""
    from kubernetes.client import Configuration

    loggers = [logging.getLogger(name) for name in ("client", "urllib3")]  # what its __init__ resets
    levels = [logger.level for logger in loggers]
    configuration = Configuration()
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)
    return configuration


@contextlib.contextmanager
def _one_model_configuration() -> Iterator[None]:
    """While torchx builds a Job, every Kubernetes model object it makes shares one Configuration.

    A `V1...` model built without `local_vars_configuration` (torchx passes none: about 22 per Job)
    makes a fresh `Configuration` (kubernetes/client/configuration.py, get_default_copy), whose `debug`
    setter calls `Logger.setLevel`, which clears the level cache of every logger in the process: about
    half the CPU of rendering a Job (bench/RESULTS.md), and it resets the client's loggers to WARNING
    on every render. A model reads its configuration only for `client_side_validation`, so one default
    serves them all. The swap lasts one dry run and dry runs are serialised (they are CPU-bound under
    the GIL, so the lock costs no concurrency); a model another thread builds meanwhile gets the same
    default it would have got. Our API client never reads the default: it is built from its own.
    """
    from kubernetes.client import Configuration

    with _MODELS_LOCK:
        shared = _model_configuration()
        original = Configuration.__dict__["get_default_copy"]
        Configuration.get_default_copy = classmethod(lambda cls: shared)
        try:
            yield
        finally:
            Configuration.get_default_copy = original


class VolcanoLauncher:
    """Creates, describes and cancels the Volcano Jobs of one namespace."""

    def __init__(self, namespace: str = "default", *, api_client: Any = None) -> None:
        self.namespace = namespace
        self._client = api_client
        self._torchx: KubernetesScheduler | None = None
        self._torchx_client: Any = None

    def api_client(self) -> Any:
        """The Kubernetes client: the one given, else in-cluster config, else the kubeconfig."""
        if self._client is None:
            from kubernetes import client, config

            configuration = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                config.load_kube_config(client_configuration=configuration)
            self._client = client.ApiClient(configuration)
        return self._client

    def _scheduler(self) -> KubernetesScheduler:
        """torchx's scheduler on our client (None for rendering: a dry run makes no API call)."""
        if self._torchx is None or self._torchx_client is not self._client:
            self._torchx = _Scheduler("olmorun", client=self._client)
            self._torchx_client = self._client
        return self._torchx

    def options(self, request: JobRequest) -> KubernetesOpts:
        placement = request.placement
        return KubernetesOpts(
            queue=placement.queue,
            namespace=self.namespace,
            service_account=placement.service_account,
            priority_class=placement.priority_class,
            validate_spec=False,  # our create is the validation; no dry-run round trip
            reserved_millicpu=0,  # resources come from the overlay, exactly as written
            reserved_memmb=0,
        )

    def dryrun(self, request: JobRequest) -> AppDryRunInfo[KubernetesJob, KubernetesOpts]:
        """torchx's request for the Job, named and owned (no API call)."""
        info = self._scheduler().submit_dryrun(app_def(request), self.options(request))
        _name_job(info.request, request, self.namespace)
        _end_on_first_failure(info.request)
        _apply_pod_template(info.request, request)
        return info

    def render(self, request: JobRequest) -> dict[str, Any]:
        """The Volcano Job of `request` as plain dicts, exactly as submit creates it (no API call)."""
        resource = self.dryrun(request).request.resource
        with _one_model_configuration():  # torchx's sanitize builds an ApiClient, hence a Configuration
            job = sanitize_for_serialization(resource)
        assert isinstance(job, dict)
        return job

    def submit(self, request: JobRequest) -> str:
        """Create the Job; one that already exists (an earlier step created it) is not an error.

        Raises kubernetes ApiException for any other refusal (403 forbidden, 422 invalid, ...).
        """
        from kubernetes.client.rest import ApiException

        self.api_client()  # load the configuration before torchx's scheduler is made with it
        try:
            return self._scheduler().schedule(self.dryrun(request))
        except ApiException as error:
            if error.status != 409:
                raise
        except ValueError as error:  # torchx turns a 409 Conflict into ValueError("... already exists")
            cause = error.__cause__
            if not (isinstance(cause, ApiException) and cause.status == 409):
                raise
        return f"{self.namespace}:{request.name}"

    def _custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api_client())

    def describe(self, job_name: str) -> JobObservation:
        """The Job's state; Missing when it does not exist. Raises ApiException for other API errors."""
        from kubernetes.client.rest import ApiException

        try:
            job = self._custom().get_namespaced_custom_object(
                namespace=self.namespace, name=job_name, **VOLCANO
            )
        except ApiException as error:
            if error.status == 404:
                return JobObservation(job_name, "Missing")
            raise
        if job.get("metadata", {}).get("deletionTimestamp"):
            # Foreground deletion: the Job stays until its pods are gone; until then it still "runs".
            return JobObservation(job_name, "Running", message="terminating", terminating=True)
        phase = job.get("status", {}).get("state", {}).get("phase", "Pending")
        if phase in _STOPPING:
            return JobObservation(
                job_name, "Running", message=f"Volcano job {phase}: its pods are stopping", terminating=True
            )
        state = _STATES.get(phase, "Pending")
        if phase == SUSPENDED_OUTSIDE:
            resume = f"vcctl job resume -N {job_name} -n {self.namespace}"
            message = (
                f"Volcano job Aborted: suspended from outside the operator (vcctl job suspend); it waits. "
                f"`{resume}` continues it from its newest checkpoint; to pause the whole run, set "
                "spec.suspend: true on the OlmoRun"
            )
            return JobObservation(job_name, state, notice=("JobSuspended", message))
        if state == "Pending":  # a pod that cannot start keeps the Job Pending forever: say why
            return JobObservation(job_name, state, notice=self._cannot_start(job_name))
        if state != "Failed":
            return JobObservation(job_name, state)
        exit_code, disruption = self._exit(job_name)
        preempted = phase in _STOPPED_FROM_OUTSIDE or exit_code == EXIT_PREEMPTED or bool(disruption)
        message = f"Volcano job {phase}" + (f", exit code {exit_code}" if exit_code is not None else "")
        if phase in _STOPPED_FROM_OUTSIDE:
            message += " (a pod was evicted, preempted or stopped from outside)"
        elif disruption:
            message += f" (pod {disruption})"
        return JobObservation(job_name, "Failed", exit_code=exit_code, preempted=preempted, message=message)

    def _cannot_start(self, job_name: str) -> tuple[str, str] | None:
        """(reason, message) when a pod of the Job waits on something only a person can fix: a Secret or
        ConfigMap that does not exist (the kubelet's CreateContainerConfigError, `secret "x" not found`),
        an image that cannot be pulled. None when every pod is merely waiting its turn."""
        from kubernetes import client

        core = client.CoreV1Api(self.api_client())
        pods = core.list_namespaced_pod(self.namespace, label_selector=f"volcano.sh/job-name={job_name}")
        for pod in pods.items or []:
            for cs in (pod.status and pod.status.container_statuses) or []:
                waiting = cs.state and cs.state.waiting
                if waiting is None or waiting.reason not in CANNOT_START_REASONS:
                    continue
                said = waiting.message or waiting.reason
                where = f"pod {pod.metadata.name} cannot start: {said}"
                if 'secret "' in said:
                    fix = (
                        f"create the Secret in namespace {self.namespace} (kubectl create secret generic ...)"
                    )
                    return "SecretNotFound", f"{where}; {fix}: the job starts once it exists"
                return str(waiting.reason), where
        return None

    def _exit(self, job_name: str) -> tuple[int | None, str]:
        """The first non-zero container exit code among the job's pods, and how a pod was taken away
        ("" when none was: evicted, preempted, or a DisruptionTarget condition with its reason)."""
        from kubernetes import client

        core = client.CoreV1Api(self.api_client())
        pods = core.list_namespaced_pod(self.namespace, label_selector=f"volcano.sh/job-name={job_name}")
        exit_code: int | None = None
        disruption = ""
        for pod in pods.items or []:
            status = pod.status
            if status is None:
                continue
            if not disruption and status.reason in EVICTED_REASONS:
                disruption = str(status.reason).lower()
            for cond in status.conditions or []:
                if not disruption and cond.type == DISRUPTION_TARGET and cond.status == "True":
                    disruption = f"disrupted: {cond.reason or DISRUPTION_TARGET}"
            for cs in status.container_statuses or []:
                terminated = cs.state and cs.state.terminated
                if exit_code is None and terminated and terminated.exit_code:
                    exit_code = int(terminated.exit_code)
        return exit_code, disruption

    def cancel(self, job_name: str) -> None:
        """Delete the Job (foreground: its pods get SIGTERM first). A Job already gone is not an error.

        Raises kubernetes ApiException for any other refusal.
        """
        from kubernetes.client.rest import ApiException

        try:
            self._custom().delete_namespaced_custom_object(
                namespace=self.namespace, name=job_name, propagation_policy="Foreground", **VOLCANO
            )
        except ApiException as error:
            if error.status != 404:
                raise


def _name_job(job: KubernetesJob, request: JobRequest, namespace: str) -> None:
    """The one overlay torchx cannot express: the Job's metadata and the pods' instance label.

    torchx names the Job `<app>-<random id>` and labels each pod `app.kubernetes.io/instance=<that id>`;
    both become the deterministic job name. Tested by tests/operator/test_launcher.py (no random id
    anywhere in the rendered Job).
    """
    job.resource["metadata"] = {
        "name": request.name,
        "namespace": namespace,
        "labels": dict(request.labels),
        "ownerReferences": [request.owner.to_kubernetes()],
    }
    for task in job.resource["spec"]["tasks"]:
        task["template"].metadata.labels[LABEL_UNIQUE_NAME] = request.name


def _apply_pod_template(job: KubernetesJob, request: JobRequest) -> None:
    """The tenant's `cluster.podTemplate`, merged into each task's pod (pod_template.py); the operator's
    pod labels keep their values. Tested by tests/operator/test_pod_template.py."""
    overlay = request.placement.pod_template
    if not overlay:
        return
    for task in job.resource["spec"]["tasks"]:
        with _one_model_configuration():
            template = sanitize_for_serialization(task["template"])
        ours = dict(template.get("metadata", {}).get("labels") or {})
        merged = merge_pod_template(template, overlay)
        merged.setdefault("metadata", {})["labels"] = {**(merged["metadata"].get("labels") or {}), **ours}
        task["template"] = merged


def _end_on_first_failure(job: KubernetesJob) -> None:
    """Volcano never retries: `maxRetry` 1 and the lifecycle policies above (torchx writes 0, read as 3).

    Tested by tests/faults/test_volcano_eviction.py (what Volcano does with them, pod event by pod event).
    """
    job.resource["spec"]["maxRetry"] = VOLCANO_MAX_RETRY
    job.resource["spec"]["policies"] = [dict(p) for p in VOLCANO_POLICIES]
