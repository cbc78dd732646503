"""The contract an objective implements (objectives/__init__.py describes it): `Objective`, its defaults
(`BaseObjective`), one micro-batch's `LossOutput` and the `StepSource` it iterates. Every objective
module and the loop (train.py) import it from here; the package's `build_objective` picks one by kind.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from olmo_trainer.config import TrainConfig
    from olmo_trainer.distributed import DistInfo
    from olmo_trainer.layout import StepPlan


class LossOutput(NamedTuple):
    """One micro-batch: `loss` is a scalar sum to backpropagate; `sums` detached metric sums."""

    loss: torch.Tensor
    sums: Mapping[str, torch.Tensor | float]


class StepSource(Protocol):
    """Iterates optimizer steps (each: this rank's micro-batches) and saves/restores its position."""

    def __iter__(self) -> Iterator[list[Any]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Objective(Protocol):
    """What a phase kind plugs into train.py (see the module docstring for the contract)."""

    def build(self, cfg: TrainConfig, info: DistInfo) -> tuple[StepPlan, StepSource]: ...

    def prepare(self, model: nn.Module, info: DistInfo) -> None: ...

    def step_inputs(self, model: nn.Module, micro_batches: list[Any]) -> list[Any]: ...

    def denominator(self, micro_batches: list[Any]) -> float: ...

    def loss(self, model: nn.Module, micro_batch: Any) -> LossOutput: ...

    def metrics(self, sums: dict[str, float], denominator: float) -> dict[str, float]: ...

    def auxiliary(self) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]: ...


class BaseObjective:
    """Defaults for the optional steps: nothing to prepare, micro-batches used as they come."""

    def prepare(self, model: nn.Module, info: DistInfo) -> None:
        return None

    def step_inputs(self, model: nn.Module, micro_batches: list[Any]) -> list[Any]:
        return micro_batches

    def auxiliary(self) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
        return {}
