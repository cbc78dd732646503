"""Operator settings, read once from the environment (the Deployment sets them).

    settings = Settings.from_env(os.environ)    # raises SettingsError naming the variable at fault

| variable                     | default     | meaning                                                    |
|------------------------------|-------------|------------------------------------------------------------|
| OLMORUN_NAMESPACES           | (all)       | comma-separated namespaces (globs allowed); empty: cluster-wide
|
| OLMORUN_RESYNC_SECONDS       | 30          | how often each run's jobs and checkpoints are observed     |
| OLMORUN_ERROR_DELAY_SECONDS  | 15          | retry delay after a transient API or storage error         |
| OLMORUN_METRICS_PORT         | 9090        | Prometheus /metrics port; 0 disables                       |
| OLMORUN_HEALTH_PORT          | 8080        | liveness probe port (GET /healthz); 0 disables             |
| OLMORUN_SCHEDULER            | kubernetes  | torchx scheduler the launcher submits to                   |
| OLMORUN_KUBE_SERVER          | (kubeconfig)| API server URL without credentials (kubectl proxy, tests)  |
| OLMORUN_PEERING              | (none)      | kopf peering name for several replicas; empty: standalone  |
| OLMORUN_MAX_WORKERS          | 16          | threads for blocking calls (launcher, object storage)      |
| OLMORUN_REQUEST_TIMEOUT_SECONDS | 60       | an API request not answered by then is abandoned and retried |
| OLMORUN_LOG_LEVEL            | INFO        | DEBUG, INFO, WARNING or ERROR                              |
| OLMORUN_WEBHOOK_PORT         | 0           | HTTPS port of the validating admission webhook; 0 disables |
| OLMORUN_WEBHOOK_CERT_DIR     | /etc/olmorun/webhook | the webhook's tls.crt and tls.key (a mounted Secret) |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

FINALIZER = "olmorun.dev/cleanup"
"""Held on every OlmoRun until its jobs are cancelled."""
ANNOTATION_PREFIX = "olmorun.dev"
"""kopf's progress and last-handled-configuration annotations live under this prefix."""
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class SettingsError(ValueError):
    """An environment variable with a value the operator cannot use."""


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    """Namespaces to serve; empty means the whole cluster."""
    resync_seconds: float = 30.0
    """Interval of the timer that observes each run's jobs (job state is polled, not watched)."""
    error_delay_seconds: float = 15.0
    """Delay before a reconcile that failed on a transient error runs again."""
    metrics_port: int = 9090
    health_port: int = 8080
    scheduler: str = "kubernetes"
    kube_server: str | None = None
    """Talk to this API server URL without credentials instead of in-cluster config or kubeconfig."""
    peering: str | None = None
    max_workers: int = 16
    log_level: str = "INFO"
    webhook_port: int = 0
    """Port of the validating admission webhook (HTTPS); 0: no webhook (the chart sets it)."""
    webhook_cert_dir: str = "/etc/olmorun/webhook"
    """Folder of the webhook's `tls.crt` and `tls.key`; kopf reloads them when they change (rotation)."""
    request_timeout_seconds: float = 60.0
    """An API server request (kopf's and the launcher's) not answered by then is abandoned: kopf retries
    it, a launcher call fails the step, which is retried (a create answered late then finds its job: 409)."""

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def liveness_endpoint(self) -> str | None:
        return f"http://0.0.0.0:{self.health_port}/healthz" if self.health_port else None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Settings from environment variables; unset or empty variables keep their defaults.

        Raises SettingsError naming the variable whose value is out of range or of the wrong type.
        """
        defaults = cls()
        namespaces = tuple(ns.strip() for ns in env.get("OLMORUN_NAMESPACES", "").split(",") if ns.strip())
        level = (env.get("OLMORUN_LOG_LEVEL") or defaults.log_level).upper()
        if level not in LOG_LEVELS:
            raise SettingsError(f"OLMORUN_LOG_LEVEL={level!r}: use one of {', '.join(LOG_LEVELS)}")
        return cls(
            namespaces=namespaces,
            resync_seconds=_number(env, "OLMORUN_RESYNC_SECONDS", defaults.resync_seconds, low=0.1),
            error_delay_seconds=_number(
                env, "OLMORUN_ERROR_DELAY_SECONDS", defaults.error_delay_seconds, low=0.1
            ),
            metrics_port=int(
                _number(env, "OLMORUN_METRICS_PORT", defaults.metrics_port, low=0, high=65535, whole=True)
            ),
            health_port=int(
                _number(env, "OLMORUN_HEALTH_PORT", defaults.health_port, low=0, high=65535, whole=True)
            ),
            scheduler=env.get("OLMORUN_SCHEDULER") or defaults.scheduler,
            kube_server=(env.get("OLMORUN_KUBE_SERVER") or "").rstrip("/") or None,
            peering=env.get("OLMORUN_PEERING") or None,
            max_workers=int(_number(env, "OLMORUN_MAX_WORKERS", defaults.max_workers, low=1, whole=True)),
            log_level=level,
            request_timeout_seconds=_number(
                env, "OLMORUN_REQUEST_TIMEOUT_SECONDS", defaults.request_timeout_seconds, low=0.1
            ),
            webhook_port=int(
                _number(env, "OLMORUN_WEBHOOK_PORT", defaults.webhook_port, low=0, high=65535, whole=True)
            ),
            webhook_cert_dir=env.get("OLMORUN_WEBHOOK_CERT_DIR") or defaults.webhook_cert_dir,
        )


def _number(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    low: float,
    high: float | None = None,
    whole: bool = False,
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        kind = "an integer" if whole else "a number"
        raise SettingsError(f"{name}={raw!r}: must be {kind}") from None
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise SettingsError(f"{name}={raw!r}: must be {bounds}")
    return value
