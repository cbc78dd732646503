"""Content identity of checkpoints (identity.py): the same tensors give the same hash whoever saved
them (1 process, 2 FSDP2 ranks, 2 DDP ranks, local or S3), a one-ulp change gives another, and DCP's
`.metadata` of two identical saves is byte-identical (no random save_id, no absolute path)."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from olmo_trainer import identity, manifest
from olmo_trainer.checkpoint import Checkpointer, load_full_state_dict, save_model_weights
from olmo_trainer.config import CheckpointConfig
from olmo_trainer.storage import filesystem
from tests.s3server import S3Server
from tests.trainer.test_checkpoint_dist import RngState, build, train_step


def record(uri: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    found = manifest.read_manifest(*filesystem(uri, **(options or {})))
    assert found is not None, uri
    return found


def one_ulp_up(value: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(value, torch.tensor(float("inf"), dtype=value.dtype))


def test_tensor_digest_depends_on_name_dtype_shape_and_every_bit() -> None:
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7
    base = identity.tensor_digest("w", weight)
    assert identity.tensor_digest("w", weight.clone()) == base
    assert identity.tensor_digest("w", weight.t().contiguous().t()) == base  # memory layout is not content
    assert identity.tensor_digest("v", weight) != base
    assert identity.tensor_digest("w", weight.reshape(4, 3)) != base
    assert identity.tensor_digest("w", weight.double()) != base
    nudged = weight.clone()
    nudged[2, 3] = one_ulp_up(nudged[2, 3])
    assert identity.tensor_digest("w", nudged) != base
    assert identity.tensor_digest("s", torch.tensor(3.0)) == identity.tensor_digest("s", torch.tensor(3.0))


def test_content_record_is_independent_of_order_and_splits_model_and_optim() -> None:
    digests = {"model.b": "2", "optim.state.b.exp_avg": "3", "model.a": "1"}
    rec = identity.content_record(digests)
    assert rec == identity.content_record(dict(reversed(list(digests.items()))))
    assert rec["model"] == identity.combine({"model.a": "1", "model.b": "2"})
    assert rec["optim"] == identity.combine({"optim.state.b.exp_avg": "3"})
    assert rec["numTensors"] == 3 and list(rec["tensors"]) == sorted(digests)
    assert identity.content_record({"model.a": "1"})["optim"] is None


def test_share_splits_every_key_once_and_balances_bytes(tmp_path: Path) -> None:
    model, optim = build("plain")
    uri = Checkpointer(str(tmp_path), CheckpointConfig(), config_hash="h").save(
        1, {"model": model, "optim": optim}
    )
    entries = identity.tensor_entries(dcp_metadata(uri))
    parts = [identity.share(entries, rank, 3) for rank in range(3)]
    assert sorted(key for part in parts for key in part) == sorted(key for key, _ in entries)
    assert all(parts)


def dcp_metadata(uri: str) -> Any:
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader(uri).read_metadata()


def test_identical_saves_have_identical_files_except_the_manifest(tmp_path: Path) -> None:
    """Before: `.metadata` held a random save_id and the absolute path, so no two saves matched."""
    model, optim = build("plain")
    train_step(model, optim, seed=3)
    uris = [
        Checkpointer(str(tmp_path / name), CheckpointConfig(), config_hash="h").save(
            1, {"model": model, "optim": optim}
        )
        for name in ("a", "elsewhere/b")
    ]
    files = [record(uri)["files"] for uri in uris]
    assert files[0] == files[1]  # every file, .metadata included, has the same sha256
    assert ".metadata" in files[0]
    assert (Path(uris[0]) / ".metadata").read_bytes() == (Path(uris[1]) / ".metadata").read_bytes()
    assert str(tmp_path).encode() not in (Path(uris[0]) / ".metadata").read_bytes()
    contents = [record(uri)["content"] for uri in uris]
    assert contents[0] == contents[1]
    assert contents[0]["algorithm"] == identity.ALGORITHM
    assert manifest.content_sha256(record(uris[0])) == contents[0]["sha256"]

    # The content identity is what the checkpoint holds: recomputed from the tensors, it agrees.
    weights = load_full_state_dict(uris[0])
    assert contents[0]["model"] == identity.combine(identity.digests_of(weights, "model."))

    # One ulp in one weight: another identity, and the per-tensor digests name the tensor.
    with torch.no_grad():
        model.hidden.bias[0] = one_ulp_up(model.hidden.bias[0])
    other = Checkpointer(str(tmp_path / "c"), CheckpointConfig(), config_hash="h").save(
        1, {"model": model, "optim": optim}
    )
    changed = record(other)["content"]
    assert changed["sha256"] != contents[0]["sha256"] and changed["optim"] == contents[0]["optim"]
    differing = [k for k in changed["tensors"] if changed["tensors"][k] != contents[0]["tensors"][k]]
    assert differing == ["model.hidden.bias"]


def test_weights_only_checkpoint_hashes_in_memory_like_a_read_back(tmp_path: Path) -> None:
    model, optim = build("plain")
    trained = Checkpointer(str(tmp_path / "t"), CheckpointConfig(), config_hash="h").save(
        1, {"model": model, "optim": optim}
    )
    soup = save_model_weights(str(tmp_path / "w" / "step1"), dict(model.state_dict()), step=1)
    assert record(soup)["content"]["model"] == record(trained)["content"]["model"]
    assert record(soup)["content"]["optim"] is None


def resave_worker(rank: int, root: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{root}/store", rank=rank, world_size=2)
    try:
        for strategy in ("fsdp", "ddp"):
            model, optim = build(strategy)
            ckpt = Checkpointer(f"{root}/one", CheckpointConfig(), config_hash="h")
            ckpt.load(f"{root}/one/step1", {"model": model, "optim": optim, "trainer": RngState()})
            Checkpointer(f"{root}/two-{strategy}", CheckpointConfig(), config_hash="h").save(
                1, {"model": model, "optim": optim, "trainer": RngState(step=1)}
            )
        # The DDP model goes before gloo's teardown (as train.train does: pytorch/pytorch#56297), and
        # both ranks are done before either tears gloo down: a rank aborted in teardown ("terminate
        # called without an active exception") while its peer was still closing, in ~1 of 10 suites.
        del model, optim, ckpt
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_same_state_saved_by_one_and_two_processes_has_one_identity(tmp_path: Path) -> None:
    model, optim = build("plain")
    train_step(model, optim, seed=1)
    one = Checkpointer(str(tmp_path / "one"), CheckpointConfig(), config_hash="h").save(
        1, {"model": model, "optim": optim, "trainer": RngState(step=1)}
    )
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(resave_worker, args=(str(tmp_path),), nprocs=2, join=True)
    want = record(one)["content"]
    assert want["optim"] is not None
    for strategy in ("fsdp", "ddp"):
        got = record(str(tmp_path / f"two-{strategy}" / "step1"))
        assert got["extra"]["worldSize"] == 2
        assert got["content"] == want, strategy
    # FSDP2 wrote the shards differently: the file hashes differ, the content identity does not.
    fsdp_files = record(str(tmp_path / "two-fsdp" / "step1"))["files"]
    assert "__1_0.distcp" in fsdp_files and fsdp_files != record(one)["files"]


@pytest.mark.slow
def test_identity_on_s3_equals_the_local_one(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket("identity")
    options = s3_server.storage_options()
    model, optim = build("plain")
    train_step(model, optim, seed=5)
    local = Checkpointer(str(tmp_path), CheckpointConfig(), config_hash="h").save(
        1, {"model": model, "optim": optim}
    )
    remote = Checkpointer(
        f"{bucket}/ckpt", CheckpointConfig(), config_hash="h", storage_options=options
    ).save(1, {"model": model, "optim": optim})
    assert record(remote, options)["content"] == record(local)["content"]
    assert record(remote, options)["files"][".metadata"] == record(local)["files"][".metadata"]
