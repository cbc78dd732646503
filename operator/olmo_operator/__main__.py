"""`python -m olmo_operator`: the OlmoRun operator (kopf), its /metrics and its /healthz.

Configuration comes from the environment (settings.py). The Deployment probes
`GET :$OLMORUN_HEALTH_PORT/healthz` (kopf's liveness endpoint: it answers while the operator's event
loop is alive) and Prometheus scrapes `:$OLMORUN_METRICS_PORT/metrics`.

Tests and the benchmark run the very same operator in-process through `operate(...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import kopf

from olmo_operator import __version__, api
from olmo_operator.handlers import Context, LauncherFactory, StatusWriter, build_registry
from olmo_operator.kube_status import redact, secret_values
from olmo_operator.metrics import Metrics
from olmo_operator.observe import JobLauncher
from olmo_operator.settings import Settings, SettingsError

USER_AGENT = f"olmorun-operator/{__version__}"
"""User-Agent of the launcher's Kubernetes client (kopf's own requests say `kopf/<version>`)."""


def kube_client(settings: Settings) -> Any:
    """The Kubernetes client the launcher uses: the same server kopf talks to."""
    import kubernetes

    if settings.kube_server:
        config = kubernetes.client.Configuration()
        config.host = settings.kube_server
    else:
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        config = kubernetes.client.Configuration.get_default_copy()
    config.connection_pool_maxsize = settings.max_workers  # one connection per worker thread
    client = kubernetes.client.ApiClient(config)
    client.user_agent = (
        USER_AGENT  # the API server's audit log (and the RBAC test) can tell our requests apart
    )
    _default_timeout(client, settings.request_timeout_seconds)
    return client


def _default_timeout(client: Any, seconds: float) -> None:
    """Every request of `client` without a timeout of its own gets `seconds`.

    The kubernetes client waits forever by default, and torchx's calls (schedule) pass no timeout: one
    API server that never answers would hold a worker thread, and the run's reconcile, for ever. The
    client has no setting for a default (kubernetes/client/rest.py: RESTClientObject.request takes
    `_request_timeout` per call), so its one request method is wrapped here.
    """
    rest = client.rest_client
    request = rest.request

    def with_timeout(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return request(*args, _request_timeout=_request_timeout or seconds, **kwargs)

    rest.request = with_timeout


class _SharedClient:
    """kube_client(settings), made on first use (in-cluster config is read then), shared by the
    launchers and the status writer."""

    def __init__(self, settings: Settings, api_client: Any = None) -> None:
        self.settings = settings
        self._client = api_client
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = kube_client(self.settings)
            return self._client


def launcher_factory(settings: Settings, api_client: Any = None) -> LauncherFactory:
    """One launcher per namespace, created on first use and shared by every run there.

    OLMORUN_SCHEDULER=kubernetes (the default): Volcano Jobs; local_cwd: processes on the operator's host.
    """
    from olmo_operator.launcher_local import LocalLauncher
    from olmo_operator.launcher_volcano import VolcanoLauncher

    launchers: dict[str, JobLauncher] = {}
    lock = threading.Lock()
    client = api_client if isinstance(api_client, _SharedClient) else _SharedClient(settings, api_client)

    def launcher_for(namespace: str) -> JobLauncher:
        with lock:
            if namespace not in launchers:
                if settings.scheduler == "local_cwd":
                    launchers[namespace] = LocalLauncher()
                else:
                    launchers[namespace] = VolcanoLauncher(namespace, api_client=client())
            return launchers[namespace]

    return launcher_for


def status_writer(client: Callable[[], Any]) -> StatusWriter:
    """Patches an OlmoRun's status subresource (a JSON merge patch) with the operator's client."""

    def write(namespace: str, name: str, patch: dict[str, Any]) -> None:
        import kubernetes

        kubernetes.client.CustomObjectsApi(client()).patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, namespace, api.PLURAL, name, patch
        )

    return write


async def operate(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    launcher_for: LauncherFactory | None = None,
    clock: Callable[[], Any] | None = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
) -> None:
    """Run the operator until `stop_flag` is set (a threading.Event or an asyncio future).

    While it runs, every record that reaches a handler of the root logger has the values of the
    credential variables of this process's environment replaced by *** (kube_status.secret_values):
    botocore's DEBUG lines carry the access key id in their Authorization header, an exception may
    carry anything.
    """
    with redacting_logs(secret_values(os.environ)):
        await _operate(
            settings,
            metrics=metrics,
            launcher_for=launcher_for,
            clock=clock,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )


async def _operate(
    settings: Settings,
    *,
    metrics: Metrics | None,
    launcher_for: LauncherFactory | None,
    clock: Callable[[], Any] | None,
    stop_flag: Any,
    ready_flag: Any,
) -> None:
    client = _SharedClient(settings)
    context = Context(
        settings=settings,
        metrics=metrics or Metrics(),
        launcher_for=launcher_for or launcher_factory(settings, client),
        write_status=status_writer(client),
    )
    if clock is not None:
        context.clock = clock
    await kopf.operator(
        registry=build_registry(settings),
        memo=kopf.Memo(context=context),
        clusterwide=settings.clusterwide,
        namespaces=settings.namespaces,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        liveness_endpoint=settings.liveness_endpoint,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


class _Redacting(logging.Filter):
    """Keeps credentials out of logs, whatever an exception or a patch dump contains."""

    def __init__(self, secrets: frozenset[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = redact(record.getMessage(), self.secrets)
            record.args = None
            if record.exc_info and not record.exc_text:  # a formatted traceback may quote a secret too
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text, self.secrets)
        return True


@contextlib.contextmanager
def redacting_logs(secrets: frozenset[str]) -> Iterator[None]:
    """A _Redacting filter on every handler of the root logger (records of every logger propagate
    there; a filter on a logger would miss its children's), removed again on exit."""
    handlers = list(logging.getLogger().handlers)
    redacting = _Redacting(secrets)
    for handler in handlers:
        handler.addFilter(redacting)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(redacting)


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as error:
        print(f"olmo_operator: {error}", file=sys.stderr)
        return 2
    kopf.configure(verbose=settings.log_level == "DEBUG")
    logging.getLogger().setLevel(settings.log_level)
    metrics = Metrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    asyncio.run(operate(settings, metrics=metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
