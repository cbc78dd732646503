"""What the kopf operator writes back to the API server: a minimal status patch and events, free of secrets.

    new = redact(status.model_dump(by_alias=True, mode="json", exclude_none=True), secrets)
    patch.setdefault("status", {}).update(merge_patch(old, new))     # nothing changed: no write at all

Pure helpers of handlers.py (which holds only wiring); tested in tests/e2e/test_operator_kmock.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

_SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|API_KEY|ACCESS_KEY|CREDENTIALS)", re.IGNORECASE)


def plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """kopf's Body (nested Mappings) as plain dicts and lists: pydantic and merge_patch want real ones."""

    def convert(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return dict(convert(body))


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
