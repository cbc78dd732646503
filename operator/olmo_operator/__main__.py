"""`python -m olmo_operator`: the OlmoRun operator (kopf), its /metrics and its /healthz.

Configuration comes from the environment (settings.py). The Deployment probes
`GET :$OLMORUN_HEALTH_PORT/healthz` (kopf's liveness endpoint: it answers while the operator's event
loop is alive) and Prometheus scrapes `:$OLMORUN_METRICS_PORT/metrics`.

Tests and the benchmark run the very same operator in-process through `operate(...)`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import kopf

from olmo_operator import __version__
from olmo_operator.handlers import Context, LauncherFactory, build_registry
from olmo_operator.kube_status import redact, secret_values
from olmo_operator.metrics import Metrics
from olmo_operator.reconcile import JobLauncher
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
    client.user_agent = USER_AGENT  # the API server's audit log (and the RBAC test) can tell our requests apart
    return client


def launcher_factory(settings: Settings, api_client: Any = None) -> LauncherFactory:
    """One launcher per namespace, created on first use and shared by every run there.

    OLMORUN_SCHEDULER=kubernetes (the default): Volcano Jobs; local_cwd: processes on the operator's host.
    """
    from olmo_operator.launcher_local import LocalLauncher
    from olmo_operator.launcher_volcano import VolcanoLauncher

    launchers: dict[str, JobLauncher] = {}
    lock = threading.Lock()
    client: list[Any] = [api_client]

    def launcher_for(namespace: str) -> JobLauncher:
        with lock:
            if namespace not in launchers:
                if settings.scheduler == "local_cwd":
                    launchers[namespace] = LocalLauncher()
                else:
                    if client[0] is None:
                        client[0] = kube_client(settings)
                    launchers[namespace] = VolcanoLauncher(namespace, api_client=client[0])
            return launchers[namespace]

    return launcher_for


async def operate(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    launcher_for: LauncherFactory | None = None,
    clock: Callable[[], Any] | None = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
) -> None:
    """Run the operator until `stop_flag` is set (a threading.Event or an asyncio future)."""
    context = Context(settings=settings, metrics=metrics or Metrics(),
                      launcher_for=launcher_for or launcher_factory(settings))
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
        return True


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as error:
        print(f"olmo_operator: {error}", file=sys.stderr)
        return 2
    kopf.configure(verbose=settings.log_level == "DEBUG")
    logging.getLogger().setLevel(settings.log_level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Redacting(secret_values(os.environ)))
    metrics = Metrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    asyncio.run(operate(settings, metrics=metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
