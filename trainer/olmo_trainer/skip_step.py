"""OLMo-core's skip-step rule: skip an optimizer update whose loss or gradient norm is an outlier.

Source: OLMo-core `src/olmo_core/optim/skip_step_optimizer.py` (`SkipStepOptimizer.get_step_factor`,
defaults `rolling_interval_length=128`, `sigma_factor=6`). For every step, with x the step's loss
(reduced over ranks) and g its gradient norm before clipping:

- the values of the `window` steps before it form the history (skipped steps included: OLMo-core
  records a value before it decides, so a lasting change of level stops being skipped);
- no step is skipped until the history and the step hold `max(20, window // 2)` values;
- z = |x - mean| / std over the history (std with Bessel's correction, as torch.std_mean), likewise for g;
- the update is skipped when z > sigma for the loss or for the gradient norm. OLMo-core compares the
  absolute deviation, so a sudden drop is skipped as well as a spike.

One deviation, on purpose: a value equal to a constant history (std 0) has z = 0 and is kept, where
OLMo-core's 0/0 gives NaN and skips it. A skipped update changes nothing: no weight decay, no moment
update, no AdamW step count (OLMo-core's step_factor 0), i.e. `optimizer.step()` is not called.

`limit` caps the skipped steps of a job (counted over its whole life, resumes included): one more
means the run is not recovering, and the job stops as `Diverged`. Pure Python, torch-free.

    rule = SkipStepRule(sigma=6.0, window=128, limit=10)
    if rule.observe(loss, grad_norm):   # True: skip this update
        ...
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MIN_VALUES = 20
"""OLMo-core's floor on the values (history + the step) before any step can be skipped."""


@dataclass
class Verdict:
    """What the rule said about one step: skipped or not, and each value's z-score (None before the
    rule is active)."""

    skip: bool
    loss_z: float | None = None
    grad_norm_z: float | None = None


def z_score(value: float, history: list[float]) -> float:
    """|value - mean| / std of `history` (sample std, n - 1); 0 for a value equal to a constant
    history, inf for any other value against one. Needs at least 2 values of history."""
    mean, std = statistics.fmean(history), statistics.stdev(history)
    deviation = abs(value - mean)
    if std == 0:
        return 0.0 if deviation == 0 else math.inf
    return deviation / std


@dataclass
class SkipStepRule:
    """The rule's state for one job: the last `window` losses and gradient norms, and the count of
    steps skipped so far (saved in the trainer state, so a resumed job decides as an uninterrupted one)."""

    sigma: float
    window: int
    limit: int
    losses: deque[float] = field(init=False)
    grad_norms: deque[float] = field(init=False)
    skipped: int = 0

    def __post_init__(self) -> None:
        self.losses = deque(maxlen=self.window)
        self.grad_norms = deque(maxlen=self.window)

    @property
    def min_values(self) -> int:
        """Values (history + the step) needed before the rule can skip: max(20, window // 2)."""
        return max(MIN_VALUES, self.window // 2)

    def observe(self, loss: float, grad_norm: float) -> Verdict:
        """Judge a step by its loss and gradient norm, then add them to the history. A skip counts
        towards `limit`; `exceeded` says when the count went past it."""
        verdict = Verdict(skip=False)
        if len(self.losses) + 1 >= self.min_values:
            verdict.loss_z = z_score(loss, list(self.losses))
            verdict.grad_norm_z = z_score(grad_norm, list(self.grad_norms))
            verdict.skip = verdict.loss_z > self.sigma or verdict.grad_norm_z > self.sigma
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        self.skipped += int(verdict.skip)
        return verdict

    @property
    def exceeded(self) -> bool:
        """True once more than `limit` steps were skipped."""
        return self.skipped > self.limit

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "grad_norms": list(self.grad_norms), "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = deque((float(v) for v in state["losses"]), maxlen=self.window)
        self.grad_norms = deque((float(v) for v in state["grad_norms"]), maxlen=self.window)
        self.skipped = int(state["skipped"])
