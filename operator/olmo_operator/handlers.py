"""kopf wiring: a routing table from Kubernetes happenings to `reconcile`. No decisions are made here.

    registry = build_registry(settings)                      # handlers bound to this operator's settings
    await kopf.operator(registry=registry, memo=Context(settings, metrics, launchers), ...)

Every trigger (create, update, resume, the resync timer) runs the same level-based step, the
Reconciler's (reconcile.py: parse -> storage options -> observe/plan/apply -> events, invalid specs
and event de-duplication included), which `olmorun local` runs too. What is kopf's is here: ONE
status patch per step, written as a minimal merge patch (nothing changed: no write at all) with
secrets redacted (kube_status.py), one Kubernetes Event per event once the status that records it is
written, a finalizer that holds deletion until every job of the run is cancelled, and failures as
kopf.TemporaryError(delay=...) / PermanentError so that kopf retries; nothing here sleeps.

The status patch is written by the handler itself (Context.write_status), not left in kopf's `patch`:
kopf applies that patch after a timer returns, and a refused patch (a 409, a 5xx past kopf's retries)
ends that object's timer for the life of the process (kopf/_core/engines/daemons.py: `_runner` adds
it to `forever_stopped`), so the run would never be polled again. Written here, a refused write is a
TemporaryError like any other: the step runs again and writes what is still missing. A timed decision
due before the next resync tick (a retry's backoff, a hang deadline: the step's `requeue_after`) is
kept on time the same way: the status is written, then `Requeue` (a TemporaryError, kopf's one
per-call schedule) runs the step again at that moment instead of at the next tick.

Job state is polled by the timer (OLMORUN_RESYNC_SECONDS) rather than watched: the launcher's describe is
the one view of a job that every torchx scheduler offers, it costs one GET per active job per interval
(bench/RESULTS.md), and a finished or invalid run is not polled at all.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from olmo_operator import api
from olmo_operator.actions import Emit
from olmo_operator.effects import StorageInUseError
from olmo_operator.kube_status import merge_patch, plain, redact, secret_values
from olmo_operator.metrics import Metrics, run_state
from olmo_operator.observe import JobLauncher
from olmo_operator.plan import is_finished
from olmo_operator.reconcile import Outcome, Reconciler
from olmo_operator.settings import ANNOTATION_PREFIX, FINALIZER, Settings
from olmo_trainer.config import hash_json

RESOURCE = (api.GROUP, api.VERSION, api.PLURAL)
WEBHOOK_ID = "validate-olmorun"
"""kopf serves the webhook at /<id>: the chart's ValidatingWebhookConfiguration calls this path."""
log = logging.getLogger(__name__)

LauncherFactory = Callable[[str], JobLauncher]
"""namespace -> the launcher that submits, describes and cancels that namespace's jobs."""
StatusWriter = Callable[[str, str, dict[str, Any]], None]
"""(namespace, name, {"status": merge patch}) -> the OlmoRun's status subresource patched; raises the
Kubernetes client's errors (ApiException, a timeout)."""


@dataclass
class Context:
    """Everything the handlers need besides the object: the operator-wide kopf memo."""

    settings: Settings
    metrics: Metrics
    launcher_for: LauncherFactory
    write_status: StatusWriter
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    secrets: frozenset[str] = field(default_factory=lambda: secret_values(os.environ))

    @property
    def reconciler(self) -> Reconciler:
        """The shared step, on this operator's launchers and clock (the clock may be replaced by tests)."""
        return Reconciler(self.launcher_for, clock=self.clock)


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
    kopf.timer(
        *RESOURCE,
        interval=settings.resync_seconds,
        initial_delay=settings.resync_seconds,
        when=needs_polling,
        registry=registry,
    )(on_timer)
    kopf.on.delete(*RESOURCE, registry=registry)(on_delete)
    if settings.webhook_port:
        kopf.on.validate(*RESOURCE, id=WEBHOOK_ID, operations=["CREATE", "UPDATE"], registry=registry)(admit)
    return registry


class SpecDigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's last-handled-configuration annotation with the spec replaced by its digest.

    kopf keeps the essence of the last handled object in an annotation to tell whether `spec` changed.
    A copy of a big spec there (Ai2's 7B stage-1 data list alone is ~160 KB) passes the API server's
    256 KiB limit on all annotations, and every later write of the object is refused (kopf #1087). Our
    handlers only need to know *that* the spec changed (the planner reads the whole spec from the body),
    so the essence keeps `{"spec": {"sha256": <digest>}}`: a change of any spec field is still a change
    of the essence, and `on.update(field="spec")` still fires, at 80 bytes whatever the spec's size.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        essence: dict[str, Any] = dict(super().build(body=body, extra_fields=extra_fields))
        if "spec" in essence:
            essence["spec"] = {"sha256": hash_json(essence["spec"])}
        return cast(kopf.BodyEssence, essence)


class Requeue(kopf.TemporaryError):
    """Not a failure: the step's next timed decision falls due in `delay` seconds, before the resync tick.

    kopf applies the step's status patch, then calls the handler again after `delay`. kopf logs every
    TemporaryError as an error, which it would post as an Event: `_QuietRequeue` keeps these out.
    """

    def __init__(self, delay: float) -> None:
        super().__init__(f"{REQUEUE_MARK} in {delay:.1f}s", delay=delay)


REQUEUE_MARK = "next timed decision due"


class _QuietRequeue(logging.Filter):
    """kopf's "<handler> failed temporarily: next timed decision due..." is logged at DEBUG: a Requeue is
    the schedule working, not an error, and is posted as no Event (kopf posts records >= WARNING)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if REQUEUE_MARK in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_QUIET_REQUEUE = _QuietRequeue()


def requeue(outcome: Outcome, settings: Settings) -> None:
    """Raise Requeue when the step's next timed decision is due before the timer's next tick."""
    due = outcome.requeue_after
    if due is not None and due < settings.resync_seconds:
        raise Requeue(max(due, 0.05))


def configure(*, settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Our finalizer and annotation names; threads for the blocking launcher and storage calls; the
    request timeout; Requeue kept out of the Events."""
    ours: Settings = memo.context.settings
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = SpecDigestDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.execution.max_workers = ours.max_workers
    settings.posting.level = logging.WARNING  # kopf's own failures become Events; its INFO chatter does not
    settings.networking.request_timeout = ours.request_timeout_seconds
    if ours.webhook_port:
        # Served behind the chart's Service and ValidatingWebhookConfiguration (kopf manages neither:
        # the operator needs no permission on admission objects); kopf reloads renewed certificates.
        settings.admission.server = kopf.WebhookServer(
            addr="0.0.0.0",
            port=ours.webhook_port,
            certfile=os.path.join(ours.webhook_cert_dir, "tls.crt"),
            pkeyfile=os.path.join(ours.webhook_cert_dir, "tls.key"),
        )
    objects = logging.getLogger("kopf.objects")  # kopf's per-object logger, the one posted as Events
    if _QUIET_REQUEUE not in objects.filters:
        objects.addFilter(_QUIET_REQUEUE)


def login(*, memo: Any, **kwargs: Any) -> kopf.ConnectionInfo | None:
    server = memo.context.settings.kube_server
    if server:  # kubectl proxy, or the emulator in tests: no credentials on this side
        return kopf.ConnectionInfo(server=server, insecure=True, default_namespace="default")
    return kopf.login_via_client(**kwargs)


def admit(*, body: kopf.Body, old: Any = None, operation: str | None = None, **_: Any) -> None:
    """The validating admission webhook: `kubectl apply` of a spec that `olmorun validate` refuses is
    refused with the same problems, each with its field (every check that needs no storage access).

    A write that leaves the spec as it was (the operator's finalizer, annotations, a deletion) is always
    admitted: an OlmoRun made valid by an older release must stay deletable. Raises kopf.AdmissionError.
    """
    if operation == "UPDATE" and (
        body.get("metadata", {}).get("deletionTimestamp")
        or (old is not None and old.get("spec") == body.get("spec"))
    ):
        return
    try:
        api.parse_olmorun(dict(body))
    except api.SpecError as error:
        problems = "; ".join(str(p) for p in error.problems)
        raise kopf.AdmissionError(
            f"invalid OlmoRun ({len(error.problems)} problem(s)): {problems}", code=422
        ) from None


def probe(*, memo: Any, **_: Any) -> int:
    """Shown on the liveness endpoint: how many runs this operator tracks."""
    return memo.context.metrics.tracked()


def needs_polling(*, status: Mapping[str, Any], **_: Any) -> bool:
    """The timer runs only while something can still change without a spec edit.

    kopf asks on every watch event of every run: only the two fields the answer depends on are parsed
    (validating the whole status, phases and jobs included, was ~5% of the operator's CPU).
    """
    status = status or {}
    parsed = api.OlmoRunStatus.model_validate(
        {key: status[key] for key in ("stage", "conditions") if key in status}
    )
    return parsed.stage != "Invalid" and not is_finished(parsed)


def on_change(*, body: kopf.Body, memo: Any, reason: str, **_: Any) -> None:
    requeue(step(body, memo, trigger=str(reason)), memo.context.settings)


def on_timer(*, body: kopf.Body, memo: Any, **_: Any) -> None:
    requeue(step(body, memo, trigger="timer"), memo.context.settings)


def on_delete(*, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Cancel every job the run ever submitted; kopf then removes the finalizer."""
    context: Context = memo.context
    guard: _Guard = memo.setdefault("guard", _Guard())
    with guard.lock:  # a reconcile in flight finishes first; its jobs are in the status it wrote
        document = guard.freshest(plain(body))
        launcher = context.launcher_for(document["metadata"].get("namespace", "default"))
        names = context.reconciler.job_names(document)
        _guarded(context, "delete", lambda: _cancel_all(launcher, names))
    context.metrics.forget(document["metadata"].get("namespace", "default"), document["metadata"]["name"])
    log.info(
        "%s/%s: cancelled %d job(s)",
        document["metadata"].get("namespace"),
        document["metadata"]["name"],
        len(names),
    )


def _cancel_all(launcher: JobLauncher, names: list[str]) -> None:
    for name in names:
        launcher.cancel(name)  # a job already gone is not an error (the launcher ignores 404)


# ---------------------------------------------------------------------------------------------
# One step: parse -> reconcile -> one status patch
# ---------------------------------------------------------------------------------------------


class _Guard:
    """Per-object: serialises reconciles, remembers the last status this process decided, whether it is
    written, and the events still waiting for it to be.

    kopf runs the timer beside the event handlers, and the object a handler is given may predate the
    status the previous step wrote (kopf has not seen that write come back yet), or have a new
    resourceVersion and the old status (kopf's own annotation writes). The operator is the only writer of the
    status, so the
    status it decided last is the one to plan from, whatever the object seen says (so nothing decided is
    done twice); the patch is computed against the object's own status unless the last write succeeded
    and the object seen predates it, so a refused or lost write is written again in full. Planning from a
    stale
    status resubmitted jobs (a second CREATE, answered 409: 1.56 CREATEs per run in bench/RESULTS.md).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen_version: str | None = None
        self.written: dict[str, Any] | None = None
        self.persisted = False
        """The status decided last was written."""
        self.pending: list[Emit] = []
        """Events of steps whose status write failed: posted after the write that records them."""

    def freshest(self, document: dict[str, Any]) -> dict[str, Any]:
        """The object with the status this process last decided (its own, until then)."""
        if self.written is not None:
            return {**document, "status": self.written}
        return document

    def patch_base(self, seen: dict[str, Any]) -> dict[str, Any]:
        """What the status patch is computed against: the object's status, or ours while it is written
        and the object seen is still the one our last patch was computed from (kopf has not seen it)."""
        fresh = seen["metadata"].get("resourceVersion") == self.seen_version
        if self.written is not None and self.persisted and fresh:
            return self.written
        return dict(seen.get("status") or {})

    def remember(self, document: dict[str, Any], status: dict[str, Any]) -> None:
        self.seen_version = document["metadata"].get("resourceVersion")
        self.written = status


def step(body: kopf.Body, memo: Any, *, trigger: str) -> Outcome:
    """One reconcile of one object: the shared step, then one status patch, then its events.

    Raises kopf.TemporaryError when the status cannot be written: the decisions are kept (nothing is
    submitted twice) and the write, with the events that wait for it, is tried again at the next step.
    """
    context: Context = memo.context
    guard: _Guard = memo.setdefault("guard", _Guard())
    with guard.lock, context.metrics.time_reconcile(trigger):
        seen = plain(body)
        document = guard.freshest(seen)
        outcome: Outcome = _guarded(context, trigger, lambda: context.reconciler.step(document))
        new = redact(
            outcome.status.model_dump(by_alias=True, mode="json", exclude_none=True), context.secrets
        )
        changes = merge_patch(guard.patch_base(seen), new)
        guard.remember(document, new)
        guard.pending += outcome.events
        meta = document["metadata"]
        context.metrics.set_state(meta.get("namespace", "default"), meta["name"], run_state(outcome.status))
        context.metrics.record_submissions(
            len(outcome.submitted), retries=sum(1 for s in outcome.submitted if s.attempt > 1)
        )
        context.metrics.record_events(outcome.events)
        if changes:
            guard.persisted = False
            namespace = meta.get("namespace", "default")
            _guarded(
                context,
                f"{trigger}: status",
                lambda: context.write_status(namespace, meta["name"], {"status": changes}),
            )
        guard.persisted = True
        for event in guard.pending:
            kopf.event(
                body, type=event.type, reason=event.reason, message=redact(event.message, context.secrets)
            )
        guard.pending = []
    return outcome


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
        raise kopf.TemporaryError(
            message, delay=retry_delay(error, context.settings.error_delay_seconds)
        ) from None


def retry_delay(error: BaseException, default: float) -> float:
    """Seconds before trying again: the API server's Retry-After (a 429 or 503 says when) if longer."""
    headers = getattr(error, "headers", None) or {}
    try:
        asked = float(headers.get("Retry-After", 0))
    except (TypeError, ValueError):  # an HTTP date instead of seconds: keep our own delay
        asked = 0.0
    return max(default, asked)


def is_permanent(error: BaseException) -> bool:
    """An API answer that retrying cannot change (bad request, forbidden, rejected by admission)."""
    if isinstance(error, StorageInUseError):
        return True
    status = getattr(error, "status", None)
    return isinstance(status, int) and status in (400, 403, 422)
