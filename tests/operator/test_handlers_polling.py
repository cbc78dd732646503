"""Which runs the resync timer polls: `handlers.needs_polling`, asked by kopf on every watch event."""

from __future__ import annotations

from typing import Any

import pytest

from olmo_operator.handlers import needs_polling

T = "2026-11-29T10:00:00Z"


def cond(type_: str, status: str) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": "R", "message": "", "lastTransitionTime": T}


JOBS = {"pretrain": {"jobs": [{"name": "r-pretrain-a1", "state": "Running", "attempt": 1}]}}


@pytest.mark.parametrize(
    ("status", "polled"),
    [
        ({}, True),  # never reconciled yet
        (
            {"stage": "Running", "conditions": [cond("Progressing", "True"), cond("Succeeded", "Unknown")]},
            True,
        ),
        ({"stage": "Running", "conditions": [cond("Succeeded", "Unknown")], "phases": JOBS}, True),
        (
            {"stage": "Succeeded", "conditions": [cond("Succeeded", "True"), cond("Progressing", "False")]},
            False,
        ),
        (
            {"stage": "Failed", "conditions": [cond("Succeeded", "False"), cond("Progressing", "False")]},
            False,
        ),
        ({"stage": "Failed", "conditions": [cond("Succeeded", "False")]}, False),
        # a phase failed while a sibling still runs: not finished yet
        ({"stage": "Running", "conditions": [cond("Succeeded", "False"), cond("Progressing", "True")]}, True),
        ({"stage": "Invalid", "conditions": [cond("Invalid", "True")]}, False),
    ],
)
def test_the_timer_polls_only_runs_that_can_still_change(status: dict[str, Any], polled: bool) -> None:
    assert needs_polling(status=status) is polled
