"""Learning-rate schedules, defined in tokens so that they do not depend on the batch size. Pure.

`build_schedule(cfg, peak_lr=..., tokens_per_step=..., total_tokens=...)` resolves a `ScheduleConfig`
into a `Schedule`; `schedule.lr(tokens)` is the learning rate once `tokens` tokens have been trained on.
The loop asks for the LR of step s at the tokens seen *after* that step, so the first warmup step
already moves the weights (an LR of exactly 0 would waste it).

Kinds (OLMo 2 paper, arXiv:2501.00656; allenai/OLMo `olmo/optim.py`):
- ``cosine``: linear warmup to the peak, then half a cosine down to ``peak * final_lr_ratio`` at
  ``t_max_tokens`` (pretraining: 10%), flat after it (OLMo 2 7B stopped before its t_max).
- ``linear``: warmup (usually none), then a straight line down to **zero** at ``t_max_tokens``
  (annealing and post-training). ``final_lr_ratio`` is a cosine setting and does not apply here:
  "linear" is the OLMo 2 anneal, whose whole point is to end at 0.
- ``constant``: warmup, then the peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from olmo_trainer.config import ScheduleConfig
from olmo_trainer.errors import ConfigurationError


@dataclass(frozen=True)
class Schedule:
    """A resolved schedule: every length in tokens."""

    kind: str
    peak_lr: float
    warmup_tokens: int
    t_max_tokens: int
    final_lr: float

    def lr(self, tokens: int) -> float:
        """The learning rate after `tokens` tokens of this phase."""
        if tokens < self.warmup_tokens:
            return self.peak_lr * tokens / self.warmup_tokens
        if self.kind == "constant":
            return self.peak_lr
        span = self.t_max_tokens - self.warmup_tokens
        progress = 1.0 if span <= 0 else min(1.0, (tokens - self.warmup_tokens) / span)
        if self.kind == "cosine":
            return self.final_lr + (self.peak_lr - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_lr + (self.peak_lr - self.final_lr) * (1.0 - progress)


def resolve_warmup(cfg: ScheduleConfig, *, tokens_per_step: int, total_tokens: int) -> int:
    """Warmup length in tokens from whichever of warmupTokens / warmupSteps / warmupFraction is set."""
    if cfg.warmup_tokens is not None:
        return cfg.warmup_tokens
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps * tokens_per_step
    if cfg.warmup_fraction is not None:
        return round(cfg.warmup_fraction * total_tokens)
    return 0


def build_schedule(
    cfg: ScheduleConfig, *, peak_lr: float, tokens_per_step: int, total_tokens: int
) -> Schedule:
    """Resolve a schedule for a phase of `total_tokens` tokens whose steps each train `tokens_per_step`.

    `peak_lr` is the configured LR, or the parent's last LR when the phase inherits it.
    """
    if peak_lr < 0 or tokens_per_step <= 0 or total_tokens <= 0:
        raise ConfigurationError(
            f"bad schedule inputs: peak_lr={peak_lr}, tokens_per_step={tokens_per_step}, total={total_tokens}"
        )
    t_max = cfg.t_max_tokens if cfg.t_max_tokens is not None else total_tokens
    final = peak_lr * cfg.final_lr_ratio if cfg.kind == "cosine" else 0.0
    if cfg.kind == "constant":
        final = peak_lr
    warmup = resolve_warmup(cfg, tokens_per_step=tokens_per_step, total_tokens=total_tokens)
    return Schedule(kind=cfg.kind, peak_lr=peak_lr, warmup_tokens=warmup, t_max_tokens=t_max, final_lr=final)
