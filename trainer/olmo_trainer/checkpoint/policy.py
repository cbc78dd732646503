"""Checkpoint policy, pure: when a job saves, and which committed checkpoints it keeps.

save_due(step, interval_steps=100, final=False, stop=False)          # step % 100 == 0
steps_to_delete([(100, False), (200, False), (300, True)], keep_last=1, keep_every=None)   # [100, 200]
"""

from __future__ import annotations

__all__ = ["save_due", "steps_to_delete"]


def save_due(step: int, *, interval_steps: int, final: bool, stop: bool) -> bool:
    """Whether the loop saves after optimizer step `step`: every `checkpoint.interval_steps`, at the last
    step of the budget (`final`), and when the job is asked to stop (a SIGTERM, a lost lease)."""
    return final or stop or step % interval_steps == 0


def steps_to_delete(
    committed: list[tuple[int, bool]], *, keep_last: int, keep_every: int | None
) -> list[int]:
    """Retention: of the committed (step, final) pairs, the steps to delete.

    Kept: the newest `keep_last`, every step that is a multiple of `keep_every`, and any final one.
    """
    steps = sorted(step for step, _ in committed)
    keep = set(steps[-keep_last:]) if keep_last > 0 else set()
    keep |= {step for step, final in committed if final}
    if keep_every:
        keep |= {step for step in steps if step % keep_every == 0}
    return [step for step in steps if step not in keep]
