"""Checkpoints on a real S3 server (SeaweedFS): FsspecWriter/Reader, commit, retention, load, soup."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from torch import nn

from olmo_trainer import manifest
from olmo_trainer.checkpoint import (
    Checkpointer,
    load_full_state_dict,
    load_model_weights,
    read_trainer_state,
)
from olmo_trainer.config import CheckpointConfig
from olmo_trainer.soup import average_checkpoints
from tests.s3server import S3Server

pytestmark = pytest.mark.slow


class Counter:
    def __init__(self, step: int = 0) -> None:
        self.step = step

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "lr": 0.5 * self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]


def net(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 3))
    optim = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    optim.step()
    return model, optim


def test_save_retain_load_and_soup_on_s3(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket("checkpoints")
    options = s3_server.storage_options()
    model, optim = net(0)
    ckpt = Checkpointer(
        f"{bucket}/run/checkpoints", CheckpointConfig(keep_last=1), config_hash="h", storage_options=options
    )
    ckpt.save(1, {"model": model, "optim": optim, "trainer": Counter(1)})
    with torch.no_grad():
        model[0].weight.add_(1.0)
    uri = ckpt.save(2, {"model": model, "optim": optim, "trainer": Counter(2)})

    assert uri == f"{bucket}/run/checkpoints/step2"
    assert ckpt.committed()[-1] == (2, uri)
    fresh = s3_server.filesystem()  # an independent client sees the committed state
    assert [step for step, _ in manifest.committed_steps(fresh, "checkpoints/run/checkpoints")] == [2]
    assert manifest.verify(fresh, "checkpoints/run/checkpoints/step2").ok

    other, other_optim = net(1)
    counter = Counter()
    ckpt.load(uri, {"model": other, "optim": other_optim, "trainer": counter})
    assert counter.step == 2 and read_trainer_state(uri, storage_options=options)["lr"] == 1.0
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key

    # A second run's checkpoint and a soup of both, written to S3 as well.
    second, second_optim = net(2)
    uri_b = Checkpointer(
        f"{bucket}/run-b/checkpoints", CheckpointConfig(), config_hash="h", storage_options=options
    ).save(2, {"model": second, "optim": second_optim})
    soup = average_checkpoints([uri, uri_b], f"{bucket}/soup/checkpoints/step2", storage_options=options)
    averaged = load_full_state_dict(soup, storage_options=options)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(averaged[key], (value + second.state_dict()[key]) / 2)
    target = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 3))
    load_model_weights(soup, target, storage_options=options)
    assert torch.equal(target[1].bias, averaged["1.bias"])


def test_retention_leaves_nothing_and_restarts_warn_only_about_real_leftovers(
    s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    """SeaweedFS keeps a deleted directory as an empty folder (as a `step/` marker object does on S3):
    retention must remove it too, or every restart reports long-deleted checkpoints as crashed saves."""
    bucket = s3_server.make_bucket("retention")
    options = s3_server.storage_options()
    model, optim = net(0)
    ckpt = Checkpointer(
        f"{bucket}/run/checkpoints", CheckpointConfig(keep_last=1), config_hash="h", storage_options=options
    )
    for step in (1, 2, 3):
        ckpt.save(step, {"model": model, "optim": optim})
    listing = s3_server.client().list_objects_v2(Bucket="retention", Prefix="run/checkpoints/", Delimiter="/")
    assert [p["Prefix"] for p in listing.get("CommonPrefixes", [])] == ["run/checkpoints/step3/"]

    # A real leftover: a save that wrote a shard and never committed.
    fs = s3_server.filesystem()
    fs.pipe_file("retention/run/checkpoints/step4/__0_0.distcp", b"half a shard")
    fs.invalidate_cache()
    with caplog.at_level(logging.WARNING, logger="olmo_trainer.checkpoint"):
        Checkpointer(
            f"{bucket}/run/checkpoints",
            CheckpointConfig(keep_last=1),
            config_hash="h",
            storage_options=options,
        ).cleanup_uncommitted()
    warned = [r.getMessage() for r in caplog.records if "uncommitted" in r.getMessage()]
    assert warned == ["removing uncommitted checkpoint directory retention/run/checkpoints/step4"]
    listing = s3_server.client().list_objects_v2(Bucket="retention", Prefix="run/checkpoints/", Delimiter="/")
    assert [p["Prefix"] for p in listing.get("CommonPrefixes", [])] == ["run/checkpoints/step3/"]
