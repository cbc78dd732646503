"""kopf wiring: a routing table from Kubernetes happenings to `reconcile`. No decisions are made here.

    registry = build_registry(settings)                      # handlers bound to this operator's settings
    await kopf.operator(registry=registry, memo=Context(settings, metrics, launchers), ...)

Every trigger (create, update, resume, the resync timer) runs the same level-based step:
parse (api.parse_olmorun) -> reconcile.reconcile_plan (observe -> plan -> apply) -> ONE status patch,
written as a minimal merge patch (nothing changed: no write at all), plus one Kubernetes Event per
planner event. An invalid spec gets `Invalid=True` (reason InvalidSpec, every validation message) and
no job; so does a spec that parses but fails later on its way to a job (reconcile.spec_fault: a config
that does not validate, a job the API server refuses with 400/422), which kopf then stops retrying. Deletion is held by a finalizer until every job of the run is cancelled. Transient failures
raise kopf.TemporaryError(delay=...) and kopf retries; nothing here sleeps.

Job state is polled by the timer (OLMORUN_RESYNC_SECONDS) rather than watched: the launcher's describe is
the one view of a job that every torchx scheduler offers, it costs one GET per active job per interval
(bench/RESULTS.md), and a finished or invalid run is not polled at all.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from olmo_operator import api, layout
from olmo_operator.actions import Emit, SubmitJob
from olmo_operator.metrics import Metrics
from olmo_operator.plan import Plan, invalid_status, is_finished
from olmo_operator.reconcile import JobLauncher, StorageInUseError, reconcile_plan, spec_fault
from olmo_operator.settings import ANNOTATION_PREFIX, FINALIZER, Settings

RESOURCE = (api.GROUP, api.VERSION, api.PLURAL)
log = logging.getLogger(__name__)
INVALID_REASON = "InvalidSpec"
RUN_STATES = ("Pending", "Running", "Succeeded", "Failed", "Suspended", "Blocked", "Invalid")
_SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|API_KEY|ACCESS_KEY|CREDENTIALS)", re.IGNORECASE)

LauncherFactory = Callable[[str], JobLauncher]
"""namespace -> the launcher that submits, describes and cancels that namespace's jobs."""


@dataclass
class Context:
    """Everything the handlers need besides the object: the operator-wide kopf memo."""

    settings: Settings
    metrics: Metrics
    launcher_for: LauncherFactory
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    secrets: frozenset[str] = field(default_factory=lambda: secret_values(os.environ))


# ---------------------------------------------------------------------------------------------
# The routing table
# ---------------------------------------------------------------------------------------------


def build_registry(settings: Settings) -> kopf.OperatorRegistry:
    """A fresh registry with every handler of the operator (no import-time global state)."""
    registry = kopf.OperatorRegistry()
    kopf.on.startup(registry=registry)(configure)
    kopf.on.login(registry=registry)(login)
    kopf.on.probe(id="runs", registry=registry)(probe)
    kopf.on.resume(*RESOURCE, registry=registry)(on_change)
    kopf.on.create(*RESOURCE, registry=registry)(on_change)
    kopf.on.update(*RESOURCE, field="spec", registry=registry)(on_change)
    kopf.timer(*RESOURCE, interval=settings.resync_seconds, initial_delay=settings.resync_seconds,
               when=needs_polling, registry=registry)(on_timer)
    kopf.on.delete(*RESOURCE, registry=registry)(on_delete)
    return registry


def configure(*, settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Our finalizer and annotation names; threads for the blocking launcher and storage calls."""
    ours: Settings = memo.context.settings
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.execution.max_workers = ours.max_workers
    settings.posting.level = logging.WARNING  # kopf's own failures become Events; its INFO chatter does not


def login(*, memo: Any, **kwargs: Any) -> kopf.ConnectionInfo | None:
    server = memo.context.settings.kube_server
    if server:  # kubectl proxy, or the emulator in tests: no credentials on this side
        return kopf.ConnectionInfo(server=server, insecure=True, default_namespace="default")
    return kopf.login_via_client(**kwargs)


def probe(*, memo: Any, **_: Any) -> int:
    """Shown on the liveness endpoint: how many runs this operator tracks."""
    return memo.context.metrics.tracked()


def needs_polling(*, status: Mapping[str, Any], **_: Any) -> bool:
    """The timer runs only while something can still change without a spec edit."""
    parsed = api.OlmoRunStatus.model_validate(dict(status or {}))
    return parsed.stage != "Invalid" and not is_finished(parsed)


def on_change(*, body: kopf.Body, patch: kopf.Patch, memo: Any, reason: str, **_: Any) -> None:
    step(body, patch, memo, trigger=str(reason))


def on_timer(*, body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    step(body, patch, memo, trigger="timer")


def on_delete(*, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Cancel every job the run ever submitted; kopf then removes the finalizer."""
    context: Context = memo.context
    guard: _Guard = memo.setdefault("guard", _Guard())
    with guard.lock:  # a reconcile in flight finishes first; its jobs are in the status it wrote
        document = guard.freshest(_plain(body))
        launcher = context.launcher_for(document["metadata"].get("namespace", "default"))
        names = job_names(document)
        _guarded(context, "delete", lambda: _cancel_all(launcher, names))
    context.metrics.forget(document["metadata"].get("namespace", "default"), document["metadata"]["name"])
    log.info("%s/%s: cancelled %d job(s)", document["metadata"].get("namespace"), document["metadata"]["name"],
             len(names))


def _cancel_all(launcher: JobLauncher, names: list[str]) -> None:
    for name in names:
        launcher.cancel(name)  # a job already gone is not an error (the launcher ignores 404)


# ---------------------------------------------------------------------------------------------
# One step: parse -> reconcile -> one status patch
# ---------------------------------------------------------------------------------------------


class _Guard:
    """Per-object: serialises reconciles, and remembers the last status written.

    kopf runs the timer beside the event handlers, and applies our patch after the handler returns:
    a reconcile that starts before the patched object is seen again would plan from a stale status.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen_version: str | None = None
        self.written: dict[str, Any] | None = None

    def freshest(self, document: dict[str, Any]) -> dict[str, Any]:
        if self.written is not None and document["metadata"].get("resourceVersion") == self.seen_version:
            return {**document, "status": self.written}
        return document

    def remember(self, document: dict[str, Any], status: dict[str, Any]) -> None:
        self.seen_version = document["metadata"].get("resourceVersion")
        self.written = status


def step(body: kopf.Body, patch: kopf.Patch, memo: Any, *, trigger: str) -> None:
    context: Context = memo.context
    guard: _Guard = memo.setdefault("guard", _Guard())
    with guard.lock, context.metrics.time_reconcile(trigger):
        document = guard.freshest(_plain(body))
        old = document.get("status") or {}
        status, events = _reconcile(context, document, trigger)
        new = redact(status.model_dump(by_alias=True, mode="json", exclude_none=True), context.secrets)
        changes = merge_patch(old, new)
        if changes:
            patch.setdefault("status", {}).update(changes)
        guard.remember(document, new)
        meta = document["metadata"]
        context.metrics.set_state(meta.get("namespace", "default"), meta["name"], run_state(status))
        for event in events:
            kopf.event(body, type=event.type, reason=event.reason, message=redact(event.message, context.secrets))


def _reconcile(context: Context, document: dict[str, Any], trigger: str) -> tuple[api.OlmoRunStatus, list[Emit]]:
    now = context.clock()
    generation = document["metadata"].get("generation")
    try:
        run = api.parse_olmorun(document)
    except api.SpecError as error:
        return _invalid(document, str(error), now, generation)
    old = api.OlmoRunStatus.model_validate(document.get("status") or {})
    if _invalid_at(old, generation):
        # This generation already failed on its way to a job (a timer or a resume raced the patch, or
        # the operator restarted): the same spec would fail the same way. Only an edit re-plans.
        return old, []
    from olmo_operator.archive import storage_options

    options = storage_options(run.spec.storage.uri, endpoint_url=run.spec.storage.endpoint_url)
    launcher = context.launcher_for(run.namespace)

    def work() -> Plan | str:
        try:
            return reconcile_plan(run, launcher=launcher, now=now, storage_options=options)
        except Exception as error:
            fault = spec_fault(error)  # the spec's fault: Invalid, never retried as transient
            if fault is None:
                raise
            return fault

    result = _guarded(context, trigger, work)
    if isinstance(result, str):
        return _invalid(document, result, now, generation)
    submitted = [a for a in result.actions if isinstance(a, SubmitJob)]
    context.metrics.record_submissions(len(submitted), retries=sum(1 for a in submitted if a.attempt > 1))
    context.metrics.record_events(result.events)
    return result.status, result.events


def _invalid_at(status: api.OlmoRunStatus, generation: int | None) -> bool:
    invalid = next((c for c in status.conditions if c.type == "Invalid"), None)
    return (
        invalid is not None
        and invalid.status == "True"
        and invalid.reason == INVALID_REASON
        and status.observed_generation == generation
    )


def _invalid(
    document: dict[str, Any], message: str, now: dt.datetime, generation: int | None
) -> tuple[api.OlmoRunStatus, list[Emit]]:
    """Invalid=True with `message`; one Warning event per distinct message; nothing planned."""
    old = api.OlmoRunStatus.model_validate(document.get("status") or {})
    status = invalid_status(old, message, now, generation)
    was = next((c for c in old.conditions if c.type == "Invalid" and c.status == "True"), None)
    repeated = was is not None and was.message == message
    return status, [] if repeated else [Emit("Warning", INVALID_REASON, message)]


def _guarded(context: Context, trigger: str, work: Callable[[], Any]) -> Any:
    """Run I/O; turn failures into kopf's retry vocabulary with a message free of secrets."""
    try:
        return work()
    except Exception as error:  # every failure of the I/O below is retried or reported, never swallowed
        message = redact(f"{trigger}: {type(error).__name__}: {error}", context.secrets)
        if is_permanent(error):
            context.metrics.record_error("permanent")
            raise kopf.PermanentError(message) from None
        context.metrics.record_error("temporary")
        raise kopf.TemporaryError(message, delay=context.settings.error_delay_seconds) from None


def is_permanent(error: BaseException) -> bool:
    """An API answer that retrying cannot change (bad request, forbidden, rejected by admission)."""
    if isinstance(error, StorageInUseError):
        return True
    status = getattr(error, "status", None)
    return isinstance(status, int) and status in (400, 403, 422)


# ---------------------------------------------------------------------------------------------
# Small pure helpers
# ---------------------------------------------------------------------------------------------


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """kopf's Body as plain dicts (pydantic and our merge patch want real dicts)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return dict(plain(body))


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: only what changed, None deletes."""
    changes: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = merge_patch(before, value)
            if nested:
                changes[key] = nested
        elif value != before or key not in old:
            changes[key] = value
    return changes


def job_names(document: Mapping[str, Any]) -> list[str]:
    """Every job a run may have submitted: each attempt of each job its status records."""
    status = api.OlmoRunStatus.model_validate(document.get("status") or {})
    try:
        run: api.OlmoRun | None = api.parse_olmorun(document)
    except api.SpecError:
        run = None
    names: list[str] = []
    for phase_name, ps in status.phases.items():
        for job in ps.jobs:
            names.append(job.name)
            if run is not None and any(p.name == phase_name for p in run.spec.phases):
                phase = run.phase(phase_name)
                names += [layout.job_name(run, phase, job.seed, a) for a in range(1, job.attempts + 1)]
    return list(dict.fromkeys(names))


def run_state(status: api.OlmoRunStatus) -> str:
    """A bounded label for metrics: the stage, except that the phases running now read "Running"."""
    if status.stage in (None, "Pending"):
        return "Pending"
    return status.stage if status.stage in RUN_STATES else "Running"


def secret_values(env: Mapping[str, str]) -> frozenset[str]:
    """Values of credential-like environment variables (long enough to be worth hiding)."""
    return frozenset(v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 6)


def redact(value: Any, secrets: Iterable[str]) -> Any:
    """`value` (a string, or dicts and lists of them) with every secret replaced by ***."""
    secrets = tuple(secrets)
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return value
    if isinstance(value, Mapping):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    return value
