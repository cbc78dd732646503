"""The torchx adapter: one job of a phase -> a torchx AppDef (pure) ; submit / describe / cancel.

    app = app_for_job(run, phase, seed, attempt, config_uri)     # pure, unit tested
    launcher = Launcher("kubernetes", namespace="olmo")           # Volcano Jobs through torchx
    manifest = launcher.render(app, job_name)                     # the Volcano Job, as a dict
    launcher.submit(app, job_name); launcher.describe(job_name); launcher.cancel(job_name)

A job is one torchrun role of `phase.nodes` replicas x `cluster.procs` processes running
`python -m olmo_trainer <kind> --config <config_uri>`, wrapped so that a SIGTERM (preemption, drain,
cancel) ends the job with exit code 143. Kubernetes specifics that an AppDef cannot say go through
torchx's pod overlay (node selector, tolerations, affinity, sized /dev/shm, labels) and AppDef metadata
(the Secrets whose keys become environment variables: `envFrom: secretRef`, never inline values).

Schedulers:
- `kubernetes`: torchx's Volcano scheduler renders the Job (`submit_dryrun`); we give it the
  deterministic name, labels and an ownerReference to the OlmoRun, and create it with the Kubernetes
  client. 409 Conflict means "already submitted" and is not an error.
- `local_cwd`: torchx's local scheduler (the embedded runner); nodes x procs run on this host.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from typing import Any, Literal

from torchx import specs
from torchx.specs.overlays import JOIN, set_overlay

from olmo_operator import layout
from olmo_operator.api import API_VERSION, KIND, OlmoRun, PhaseSpec
from olmo_operator.plan import JobObservation, ObservedState
from olmo_trainer.layout import EXIT_PREEMPTED

job_name = layout.job_name  # re-exported: the naming contract lives with the storage layout (pure)

ROLE = "trainer"
RDZV_PORT = 29500
SHM_VOLUME = "dshm"  # the name torchx gives its /dev/shm emptyDir; we size it
VOLCANO = {"group": "batch.volcano.sh", "version": "v1alpha1", "plural": "jobs"}
# AppDef metadata keys: what the Volcano Job needs beyond the role, carried by the app itself.
SECRETS_KEY = "olmorun.dev/env-from-secrets"
OWNER_KEY = "olmorun.dev/owner"
QUANTITIES_KEY = "olmorun.dev/quantities"
"""The spec's cpu/memory strings: torchx rounds them (cores x 1000 m, MB), the Job keeps them as written."""
QUEUE_KEY = "olmorun.dev/queue"
SERVICE_ACCOUNT_KEY = "olmorun.dev/service-account"
PRIORITY_CLASS_KEY = "olmorun.dev/priority-class"
LABEL_RUN = "olmorun.dev/run"
LABEL_PHASE = "olmorun.dev/phase"
LABEL_SEED = "olmorun.dev/seed"
LABEL_ATTEMPT = "olmorun.dev/attempt"
LABEL_RUN_UID = "olmorun.dev/run-uid"
Scheduler = Literal["kubernetes", "local_cwd"]

# ---------------------------------------------------------------------------------------------
# Pure: AppDef, labels, owner reference
# ---------------------------------------------------------------------------------------------

def cpu_cores(quantity: str | None) -> float:
    """A Kubernetes CPU quantity ('96', '500m') in cores; 0 when unset (no request).

    Read with the Kubernetes client's own parser; api.py has already checked the quantity grammar.
    """
    from kubernetes.utils import parse_quantity  # here: the kubernetes client is slow to import

    return float(parse_quantity(quantity)) if quantity else 0.0


def memory_mb(quantity: str | None) -> int:
    """A Kubernetes memory quantity ('1600Gi', '512M') in MB (torchx's unit), rounded up; 0 when unset."""
    from kubernetes.utils import parse_quantity

    if not quantity:
        return 0
    return math.ceil(parse_quantity(quantity) / 10**6)


def job_labels(run: OlmoRun, phase: PhaseSpec, seed: int, attempt: int) -> dict[str, str]:
    labels = {
        LABEL_RUN: run.name,
        LABEL_PHASE: phase.name,
        LABEL_SEED: str(seed),
        LABEL_ATTEMPT: str(attempt),
    }
    if run.metadata.uid:
        labels[LABEL_RUN_UID] = run.metadata.uid
    return labels


def owner_reference(run: OlmoRun) -> dict[str, Any]:
    """Jobs are owned by their OlmoRun: deleting the run garbage-collects its jobs."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": run.name,
        "uid": run.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def secret_names(run: OlmoRun) -> list[str]:
    """Secrets whose keys the jobs receive as environment variables (storage, then wandb)."""
    refs = [run.spec.storage.secret_ref]
    if run.spec.tracking.wandb is not None:
        refs.append(run.spec.tracking.wandb.secret_ref)
    names: list[str] = []
    for ref in refs:
        if ref is not None and ref.name not in names:
            names.append(ref.name)
    return names


def _command(kind: str, config_uri: str, *, nnodes: int, nproc: int, rdzv_endpoint: str, rdzv_id: str) -> str:
    """The shell line of every node: torchrun under a trap that turns SIGTERM into exit 143.

    torchrun reports any worker failure, and its own SIGTERM, as exit 1; the trap keeps
    "stopped from outside" (preempted: resubmit, no failure counted) apart from "broken" (retry).
    Dollars are doubled: torchx substitutes its macros with string.Template.
    """
    def quoted(*args: str) -> str:
        return shlex.join(args).replace("$", "$$")

    launcher = quoted(
        "torchrun",
        "--nnodes", str(nnodes),
        "--nproc_per_node", str(nproc),
        "--rdzv_backend", "c10d",
        "--rdzv_id", rdzv_id,
        "--max_restarts", "0",
        "--tee", "3",
    )  # fmt: skip
    # The endpoint stays unquoted: on Kubernetes it is a shell expansion of rank 0's host variable.
    trainer = quoted("-m", "olmo_trainer", kind, "--config", config_uri)
    return (
        f"trap 'kill -TERM $$child 2>/dev/null; wait $$child; exit {EXIT_PREEMPTED}' TERM INT; "
        f"{launcher} --rdzv_endpoint {rdzv_endpoint} {trainer} & child=$$!; wait $$child"
    )


def _env(run: OlmoRun, phase: PhaseSpec, seed: int, attempt: int, config_uri: str) -> dict[str, str]:
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
    return {k: v.replace("$", "$$") for k, v in env.items()}


TRAINER_UID = 1000
"""The unprivileged user of the trainer image; training pods never run as root."""
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": TRAINER_UID,
    "runAsGroup": TRAINER_UID,
    "fsGroup": TRAINER_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
# Capabilities are not all dropped: RDMA/InfiniBand transports of NCCL need IPC_LOCK on some clusters.
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "privileged": False}


def _pod_overlay(run: OlmoRun, phase: PhaseSpec, seed: int, attempt: int) -> dict[str, Any]:
    cluster = run.spec.cluster
    spec: dict[str, Any] = {
        "securityContext": dict(POD_SECURITY),
        # torchx mounts an unbounded memory emptyDir on /dev/shm; bound it to cluster.shmSize.
        JOIN("volumes", on="name"): [
            {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": cluster.shm_size}}
        ],
    }
    if cluster.node_selector:
        spec["nodeSelector"] = dict(cluster.node_selector)
    if cluster.tolerations:
        spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in cluster.tolerations]
    if cluster.affinity:
        spec["affinity"] = dict(cluster.affinity)
    if cluster.priority_class_name:
        spec["priorityClassName"] = cluster.priority_class_name
    return {"metadata": {"labels": job_labels(run, phase, seed, attempt)}, "spec": spec}


def app_for_job(
    run: OlmoRun, phase: PhaseSpec, seed: int, attempt: int, config_uri: str, *, single_host: bool = False
) -> specs.AppDef:
    """The torchx AppDef of one attempt of one job (pure).

    Multi-node: `phase.nodes` replicas of one role, torchrun with c10d rendezvous on replica 0.
    single_host (the local scheduler): one replica running nodes x procs processes on this host.
    """
    procs = run.spec.cluster.procs
    name = layout.job_name(run, phase, seed, attempt)
    cluster = run.spec.cluster
    gpus = cluster.gpus_per_node
    if phase.kind == "soup":
        # Averaging is one process on CPU (one ingredient in memory at a time): no GPUs, no peers.
        nnodes, nproc, gpus, endpoint = 1, 1, 0, "localhost:0"
    elif single_host:
        nnodes, nproc, endpoint = 1, phase.nodes * procs, "localhost:0"  # port 0: a free port
    else:
        nnodes, nproc = phase.nodes, procs
        endpoint = f"$${{{specs.macros.rank0_env}:=localhost}}:{RDZV_PORT}"
    role = specs.Role(
        name=ROLE,
        image=run.spec.image,
        entrypoint="bash",
        args=[
            "-c",
            _command(
                phase.kind, config_uri, nnodes=nnodes, nproc=nproc, rdzv_endpoint=endpoint, rdzv_id=name
            ),
        ],
        num_replicas=nnodes,
        resource=specs.Resource(
            cpu=cpu_cores(cluster.cpu),  # torchx multiplies by 1000: fractions work
            gpu=gpus,
            memMB=memory_mb(cluster.memory),
        ),
        env=_env(run, phase, seed, attempt, config_uri),
        port_map={"c10d": RDZV_PORT},
        max_retries=0,  # retries are the operator's: a new attempt, with backoff, resuming from a checkpoint
    )
    set_overlay(role, "kubernetes", "V1Pod", _pod_overlay(run, phase, seed, attempt))
    metadata = {
        SECRETS_KEY: ",".join(secret_names(run)),
        OWNER_KEY: json.dumps(owner_reference(run), sort_keys=True),
        QUANTITIES_KEY: json.dumps({"cpu": cluster.cpu, "memory": cluster.memory}),
        QUEUE_KEY: cluster.queue,
        SERVICE_ACCOUNT_KEY: cluster.service_account_name or "",
        PRIORITY_CLASS_KEY: cluster.priority_class_name or "",
    }
    return specs.AppDef(name=name, roles=[role], metadata=metadata)


# ---------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------

_LOCAL_STATES: dict[str, ObservedState] = {
    "SUBMITTED": "Pending",
    "PENDING": "Pending",
    "RUNNING": "Running",
    "SUCCEEDED": "Succeeded",
    "FAILED": "Failed",
    "CANCELLED": "Missing",
    "UNKNOWN": "Missing",
}
_VOLCANO_STATES: dict[str, ObservedState] = {
    "Pending": "Pending",
    "Running": "Running",
    "Restarting": "Running",
    "Completing": "Running",
    "Completed": "Succeeded",
    "Failed": "Failed",
    "Terminated": "Failed",
    "Terminating": "Failed",
    "Aborted": "Failed",
    "Aborting": "Failed",
}
_STOPPED_FROM_OUTSIDE = ("Terminated", "Terminating", "Aborted", "Aborting")


class Launcher:
    """Submit, describe and cancel jobs through torchx: Volcano on Kubernetes, or local processes."""

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        namespace: str = "default",
        api_client: Any = None,
        log_dir: str | None = None,
    ):
        if scheduler not in ("kubernetes", "local_cwd"):
            raise ValueError(f"unknown scheduler {scheduler!r}: kubernetes or local_cwd")
        self.scheduler = scheduler
        self.namespace = namespace
        self.api_client = api_client
        self.log_dir = log_dir
        self._torchx: Any = None
        self._local_ids: dict[str, str] = {}
        self._finished: dict[str, JobObservation] = {}

    @property
    def single_host(self) -> bool:
        return self.scheduler == "local_cwd"

    def _scheduler(self) -> Any:
        if self._torchx is None:
            if self.scheduler == "kubernetes":
                from torchx.schedulers.kubernetes_scheduler import create_scheduler

                self._torchx = create_scheduler("olmorun", client=self.api_client)
            else:
                from torchx.schedulers.local_scheduler import create_scheduler as create_local

                self._torchx = create_local("olmorun", cache_size=1000)
        return self._torchx

    # -- Kubernetes ------------------------------------------------------------------------------
    def _cfg(self, app: specs.AppDef) -> dict[str, Any]:
        meta = app.metadata
        return {
            "queue": meta.get(QUEUE_KEY) or "default",
            "namespace": self.namespace,
            "service_account": meta.get(SERVICE_ACCOUNT_KEY) or None,
            "priority_class": meta.get(PRIORITY_CLASS_KEY) or None,
            "validate_spec": False,  # our own create below is the validation; no dry-run round trip
            "reserved_millicpu": 0,  # request exactly what the spec says
            "reserved_memmb": 0,
        }

    def render(self, app: specs.AppDef, job_name: str) -> dict[str, Any]:
        """The Volcano Job manifest of `app`, named `job_name` (no API call)."""
        from kubernetes.client import ApiClient

        info = self._scheduler().submit_dryrun(app, self._cfg(app))
        resource = ApiClient().sanitize_for_serialization(info.request.resource)
        # torchx names jobs `<app>-<random>` and threads that id through labels and --rdzv_id;
        # the deterministic name replaces it everywhere, so a resubmission collides (409), never duplicates.
        unique = resource["metadata"]["name"]
        manifest: dict[str, Any] = json.loads(json.dumps(resource).replace(unique, job_name))
        meta = manifest["metadata"]
        meta["name"] = job_name
        meta["namespace"] = self.namespace
        role_labels = (
            app.roles[0].metadata.get("kubernetes", {}).get("V1Pod", {}).get("metadata", {}).get("labels")
        )
        if role_labels:
            meta["labels"] = dict(role_labels)
        if app.metadata.get(OWNER_KEY):
            meta["ownerReferences"] = [json.loads(app.metadata[OWNER_KEY])]
        secrets = [s for s in app.metadata.get(SECRETS_KEY, "").split(",") if s]
        quantities = {k: v for k, v in json.loads(app.metadata.get(QUANTITIES_KEY, "{}")).items() if v}
        for task in manifest["spec"]["tasks"]:
            for container in task["template"]["spec"]["containers"]:
                container["securityContext"] = dict(CONTAINER_SECURITY)
                for bound in ("requests", "limits"):
                    container.setdefault("resources", {}).setdefault(bound, {}).update(quantities)
                if secrets:
                    container["envFrom"] = [{"secretRef": {"name": s}} for s in secrets]
        return manifest

    def _custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self._scheduler()._api_client())

    def _k8s_submit(self, app: specs.AppDef, job_name: str) -> str:
        from kubernetes.client.rest import ApiException

        body = self.render(app, job_name)
        try:
            self._custom().create_namespaced_custom_object(namespace=self.namespace, body=body, **VOLCANO)
        except ApiException as error:
            if error.status != 409:  # 409: already submitted by an earlier step: idempotent
                raise
        return f"{self.namespace}:{job_name}"

    def _k8s_describe(self, job_name: str) -> JobObservation:
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
        state = _VOLCANO_STATES.get(phase, "Pending")
        if state != "Failed":
            return JobObservation(job_name, state)
        exit_code, reason = self._k8s_exit(job_name)
        preempted = phase in _STOPPED_FROM_OUTSIDE or exit_code == EXIT_PREEMPTED or reason in ("Evicted", "Preempting")
        message = f"Volcano job {phase}" + (f", exit code {exit_code}" if exit_code is not None else "")
        return JobObservation(job_name, "Failed", exit_code=exit_code, preempted=preempted, message=message)

    def _k8s_exit(self, job_name: str) -> tuple[int | None, str]:
        """The first non-zero container exit code and pod reason among the job's pods."""
        from kubernetes import client

        core = client.CoreV1Api(self._scheduler()._api_client())
        pods = core.list_namespaced_pod(self.namespace, label_selector=f"volcano.sh/job-name={job_name}")
        for pod in pods.items or []:
            reason = (pod.status and pod.status.reason) or ""
            for cs in (pod.status and pod.status.container_statuses) or []:
                terminated = cs.state and cs.state.terminated
                if terminated and terminated.exit_code:
                    return int(terminated.exit_code), reason
            if reason:
                return None, reason
        return None, ""

    def _k8s_cancel(self, job_name: str) -> None:
        from kubernetes.client.rest import ApiException

        try:
            self._custom().delete_namespaced_custom_object(
                namespace=self.namespace, name=job_name, propagation_policy="Foreground", **VOLCANO
            )
        except ApiException as error:
            if error.status != 404:
                raise

    # -- local processes -------------------------------------------------------------------------
    def _local_submit(self, app: specs.AppDef, job_name: str) -> str:
        if job_name in self._local_ids:
            return self._local_ids[job_name]  # idempotent, like a 409 on Kubernetes
        for role in app.roles:
            # torchrun and python of this interpreter's environment, whatever PATH the user has.
            role.env["PATH"] = os.path.dirname(sys.executable)
        cfg = {"log_dir": self.log_dir} if self.log_dir else {}
        scheduler = self._scheduler()
        app_id: str = scheduler.schedule(scheduler.submit_dryrun(app, cfg))
        self._local_ids[job_name] = app_id
        return app_id

    def _local_describe(self, job_name: str) -> JobObservation:
        if job_name in self._finished:
            return self._finished[job_name]
        app_id = self._local_ids.get(job_name)
        response = self._scheduler().describe(app_id) if app_id else None
        if response is None:
            return JobObservation(job_name, "Missing")
        state = _LOCAL_STATES.get(response.state.name, "Missing")
        exit_code = self._local_exit(app_id) if state == "Failed" else None
        message = f"exit code {exit_code}; logs: {response.ui_url}" if state == "Failed" else ""
        observation = JobObservation(
            job_name,
            state,
            exit_code=exit_code,
            preempted=exit_code == EXIT_PREEMPTED,
            message=message,
        )
        if state in ("Succeeded", "Failed", "Missing"):
            self._finished[job_name] = observation  # torchx closes a finished app once; remember it
        return observation

    def _local_exit(self, app_id: str | None) -> int | None:
        local_app = self._scheduler()._apps.get(app_id)
        codes = (
            [r.proc.returncode for rs in local_app.role_replicas.values() for r in rs] if local_app else []
        )
        return next((c for c in codes if c), None)

    def _local_cancel(self, job_name: str) -> None:
        app_id = self._local_ids.get(job_name)
        if app_id and job_name not in self._finished:
            self._scheduler().cancel(app_id)
            self._finished[job_name] = JobObservation(job_name, "Missing", message="cancelled")

    # -- public ----------------------------------------------------------------------------------
    def submit(self, app: specs.AppDef, job_name: str) -> str:
        """Submit one attempt; resubmitting the same name is a no-op. Returns the scheduler's id."""
        if self.scheduler == "kubernetes":
            return self._k8s_submit(app, job_name)
        return self._local_submit(app, job_name)

    def describe(self, job_name: str) -> JobObservation:
        """The job's state (Missing when the scheduler does not know it); no checkpoint or metrics."""
        if self.scheduler == "kubernetes":
            return self._k8s_describe(job_name)
        return self._local_describe(job_name)

    def cancel(self, job_name: str) -> None:
        """Stop a job (its processes get SIGTERM and may checkpoint); it then reads as Missing."""
        if self.scheduler == "kubernetes":
            self._k8s_cancel(job_name)
        else:
            self._local_cancel(job_name)

    def close(self) -> None:
        """Stop every local job this launcher started (the embedded runner's Ctrl-C)."""
        for name in list(self._local_ids):
            self._local_cancel(name)
