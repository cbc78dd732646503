"""Fencing: one writer per job directory (olmo_trainer/lease.py), on file:// and on a real S3 server.

- the rules, table-driven: a newer attempt takes over, an older one never does, the same attempt
  started again takes over, a lease that is missing or garbage refuses a commit;
- the lease on each backend: acquire, renew (counted), a takeover by a newer attempt fences the old
  holder, a stale attempt cannot acquire, an old holder's renewal that raced a takeover is undone;
- the Checkpointer given a lease: after a takeover the old attempt's save writes no file, its commit
  and retention are refused (Fenced on the calling rank), and the newer attempt's checkpoints are intact;
- a stale attempt started deliberately against a newer one's directory (a real trainer process, on
  file:// and s3://) exits EXIT_PERMANENT with the message, records reason `Fenced` for its own
  attempt, and leaves every byte of the newer attempt's directory as it was;
- an attempt whose lease is taken over while it trains stops at its next save, writing nothing more:
  no checkpoint, and no line in the metrics record (checked before every write, as a commit is).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from olmo_trainer import manifest
from olmo_trainer.checkpoint import Checkpointer
from olmo_trainer.config import CheckpointConfig
from olmo_trainer.failure import ATTEMPT_ENV, read_failure
from olmo_trainer.layout import EXIT_PERMANENT, checkpoints_dir, lease_uri
from olmo_trainer.lease import FENCED_REASON, Fenced, Lease, LeaseRecord, may_acquire, refusal
from olmo_trainer.metrics_log import MetricsFile, read_records, read_text
from olmo_trainer.storage import filesystem, sha256_file
from olmo_trainer.tracking import Tracker
from tests.s3server import S3Server
from tests.trainer.dist_util import REPO, _env, tiny_config, trainer
from tests.trainer.test_resume import wait_for_step


def record(attempt: int, holder: str = "h") -> LeaseRecord:
    return LeaseRecord(job=f"j-a{attempt}", attempt=attempt, holder=holder, acquired_at="t", renewed_at="t")


@pytest.mark.parametrize(
    ("held", "attempt", "acquire"),
    [
        (None, 0, True),
        (record(2), 3, True),
        (record(2), 2, True),
        (record(3), 2, False),
        (record(0), 0, True),
    ],
    ids=["nobody", "newer", "same-again", "older", "outside-operator"],
)
def test_who_may_acquire(held: LeaseRecord | None, attempt: int, acquire: bool) -> None:
    assert may_acquire(held, attempt) is acquire


@pytest.mark.parametrize(
    ("held", "attempt", "holder", "words"),
    [
        (record(2, "me"), 2, "me", None),
        (record(3, "new"), 2, "me", "attempt 2 is stale; /d belongs to attempt 3"),
        (record(2, "other"), 2, "me", "taken over by another start of attempt 2"),
        (None, 2, "me", "has no readable lease"),
    ],
    ids=["mine", "newer-holds", "restarted", "missing"],
)
def test_refusal_names_the_owner(
    held: LeaseRecord | None, attempt: int, holder: str, words: str | None
) -> None:
    problem = refusal(held, attempt=attempt, holder=holder, action="commit of /d/step4", where="/d")
    if words is None:
        assert problem is None
    else:
        assert problem is not None and words in problem and problem.startswith("commit of /d/step4 refused")


def test_a_lease_file_of_garbage_is_no_lease() -> None:
    assert LeaseRecord.from_json(b"\x00\xffnot json") is None
    assert LeaseRecord.from_json('{"job": "x"}') is None
    assert LeaseRecord.from_json(record(4).to_json()) == record(4)


@pytest.fixture(params=["file", "s3"])
def save_dir(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """A job directory on each backend, with its fsspec options."""
    if request.param == "file":
        return str(tmp_path / "job"), {}
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.make_bucket(f"fence-{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:10]}")
    return f"{bucket}/ns/run/phases/pretrain", server.storage_options()


def test_takeover_fences_the_old_holder_on_every_backend(save_dir: tuple[str, dict[str, Any]]) -> None:
    where, options = save_dir
    ticks = [0.0]
    old = Lease(
        where,
        job="r-pretrain-a1",
        attempt=1,
        storage_options=options,
        renew_seconds=10,
        monotonic=lambda: ticks[0],
    )
    assert old.acquire().attempt == 1
    assert old.renew() is False  # not due yet
    ticks[0] = 11.0
    assert old.renew() is True
    renewed = old.read()
    assert renewed is not None and renewed.renewals == 1
    old.check("commit")

    new = Lease(where, job="r-pretrain-a2", attempt=2, storage_options=options)
    new.acquire()  # unconditionally: attempts are monotonic per job key
    for action in (lambda: old.check("commit of step8"), lambda: old.renew(force=True), old.acquire):
        with pytest.raises(Fenced, match=r"attempt 1 is stale; .* belongs to attempt 2 \(r-pretrain-a2"):
            action()
    held = new.read()
    assert held is not None and (held.attempt, held.holder, held.job) == (2, new.holder, "r-pretrain-a2")

    # The same attempt started again (a rerun after SIGKILL) takes over from its earlier self.
    again = Lease(where, job="r-pretrain-a2", attempt=2, storage_options=options)
    again.acquire()
    with pytest.raises(Fenced, match="taken over by another start of attempt 2"):
        new.check("commit")

    # An old holder's renewal that raced the takeover (its write landed last) is undone by the newer
    # attempt's next check; the old holder is refused at its own next one.
    fs, path = filesystem(lease_uri(where), **options)
    fs.pipe_file(path, LeaseRecord("r-pretrain-a1", 1, old.holder, "t", "t").to_json().encode())
    again.check("commit of step9")
    held = again.read()
    assert held is not None and held.holder == again.holder
    with pytest.raises(Fenced):
        old.check("commit")


def test_the_metrics_record_takes_no_line_from_an_attempt_that_lost_the_lease(
    save_dir: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, s3_server: S3Server
) -> None:
    """metrics.jsonl (a line per step on a local disk, segments on an object store) is written only while
    the attempt holds the lease: after a takeover its next write is refused, nothing reaches storage
    then or later, and the Tracker tells the training loop to stop."""
    where, options = save_dir
    if options:  # MetricsFile reads the environment's storage settings, as the trainer does
        for key, value in s3_server.env().items():
            monkeypatch.setenv(key, value)
    old = Lease(where, job="r-pretrain-a1", attempt=1, storage_options=options)
    old.acquire()
    checkpointer = Checkpointer(
        checkpoints_dir(where), CheckpointConfig(), config_hash="h", lease=old, storage_options=options
    )
    metrics = MetricsFile(where, resume_step=None, flush_seconds=0.0, may_write=checkpointer.fence.holds)
    for step in (1, 2):
        metrics.append({"step": step, "loss": 1.0})
    fs, root = filesystem(where, **options)
    assert [row["step"] for row in read_records(fs, root)] == [1, 2] and not metrics.fenced

    Lease(where, job="r-pretrain-a2", attempt=2, storage_options=options).acquire()
    before = read_text(fs, root)
    metrics.append({"step": 3, "loss": 1.0})
    metrics.close()
    assert metrics.fenced and read_text(fs, root) == before
    assert [row["step"] for row in read_records(fs, root)] == [1, 2]

    tracker = Tracker.__new__(Tracker)  # the Tracker's own logic around a fenced record (no wandb)
    tracker.metrics, tracker.wandb_run = metrics, None
    assert tracker.log({"step": 4, "loss": 1.0}) is False


class Counter:
    def __init__(self, step: int = 0) -> None:
        self.step = step

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]


def files_of(fs: Any, path: str) -> dict[str, str]:
    """Every file under `path` with its sha256: the bytes a fenced writer must not change."""
    fs.invalidate_cache()
    return {str(name): sha256_file(fs, str(name)) for name in sorted(fs.find(path))}


def test_a_fenced_checkpointer_writes_commits_and_prunes_nothing(
    save_dir: tuple[str, dict[str, Any]],
) -> None:
    where, options = save_dir
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optim = torch.optim.AdamW(model.parameters())
    state = {"model": model, "optim": optim, "trainer": Counter()}
    old_lease = Lease(where, job="r-a1", attempt=1, storage_options=options)
    old = Checkpointer(
        checkpoints_dir(where),
        CheckpointConfig(keep_last=1),
        config_hash="h",
        storage_options=options,
        lease=old_lease,
    )
    old.fence.acquire()
    old.save(1, state)
    old.save(2, state)  # retention (keep_last 1) deleted step 1: the lease allowed it
    assert [s for s, _ in old.committed()] == [2]

    new_lease = Lease(where, job="r-a2", attempt=2, storage_options=options)
    new = Checkpointer(
        checkpoints_dir(where),
        CheckpointConfig(keep_last=5),
        config_hash="h",
        storage_options=options,
        lease=new_lease,
    )
    new.fence.acquire()
    new.save(3, state)  # the newer attempt's checkpoint (it keeps 5)
    fs, root = filesystem(where, **options)
    before = files_of(fs, root)

    with pytest.raises(Fenced, match=r"save of .*step4 refused: attempt 1 is stale"):
        old.save(4, state)
    with pytest.raises(Fenced, match="removing the uncommitted"):
        fs.makedirs(f"{root}/checkpoints/step5", exist_ok=True)
        fs.pipe_file(f"{root}/checkpoints/step5/partial", b"x")  # a crashed save for it to clean
        old.cleanup_uncommitted()
    fs.rm(f"{root}/checkpoints/step5", recursive=True)
    with pytest.raises(Fenced, match=r"retention \(deleting step2\) refused"):
        old._apply_retention()  # the old attempt keeps 1: it would delete step 2
    assert files_of(fs, root) == before
    assert [s for s, _ in new.committed()] == [2, 3]


def committed_files(fs: Any, root: str) -> dict[str, str]:
    """The files of every committed checkpoint under `root`, with their sha256."""
    out: dict[str, str] = {}
    for _, path in manifest.committed_steps(fs, checkpoints_dir(root)):
        out.update(files_of(fs, path))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_stale_attempt_started_against_a_newer_ones_directory_is_refused(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env: dict[str, str] = {"OLMO_WORK_DIR": str(tmp_path / "work")}
    if backend == "file":
        where, options = str(tmp_path / "out"), {}
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        where, options = (
            f"{server.make_bucket('stale-start')}/ns/tiny/phases/pretrain",
            server.storage_options(),
        )
        env.update(server.env())
    config = tiny_config(
        tmp_path, saveDir=where, maxSteps=4, checkpoint={"intervalSteps": 2}, parallel={"strategy": "ddp"}
    )
    newer = trainer(["pretrain", "--config", str(config)], env={**env, ATTEMPT_ENV: "2"}, timeout=240)
    assert newer.returncode == 0, newer.stdout[-2000:] + newer.stderr[-3000:]
    fs, root = filesystem(where, **options)
    before = files_of(fs, root)
    assert any(name.endswith("step4/MANIFEST.json") for name in before)

    stale = trainer(["pretrain", "--config", str(config)], env={**env, ATTEMPT_ENV: "1"}, timeout=240)
    assert stale.returncode == EXIT_PERMANENT, stale.stdout[-2000:] + stale.stderr[-3000:]
    assert "Fenced: start refused: attempt 1 is stale;" in stale.stderr
    assert "belongs to attempt 2" in stale.stderr and "stops without writing" in stale.stderr
    fs.invalidate_cache()  # the same cached fsspec instance listed the directory before the record existed
    failure = read_failure(where, attempt=1, **options)
    assert failure is not None and failure.reason == FENCED_REASON
    after = files_of(fs, root)
    changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    assert {name.rsplit("/", 1)[-1] for name in changed} <= {"failure.json"}, changed  # its own record only
    lease = json.loads(fs.cat_file(filesystem(lease_uri(where), **options)[1]))
    assert lease["attempt"] == 2


@pytest.mark.slow
def test_an_attempt_taken_over_while_training_stops_at_its_next_save(tmp_path: Path) -> None:
    """The zombie: attempt 1 trains on while attempt 2 owns the directory. Its next save writes nothing."""
    config = tiny_config(
        tmp_path, maxSteps=5000, checkpoint={"intervalSteps": 4, "keepLast": 1}, parallel={"strategy": "ddp"}
    )
    where = tmp_path / "out"
    with open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "olmo_trainer", "pretrain", "--config", str(config)],
            cwd=REPO,
            env={**_env(None), ATTEMPT_ENV: "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_step(where, proc, 5, timeout=120)  # step 4 is committed
        Lease(str(where), job="tiny-pretrain-a2", attempt=2).acquire()
        lines_at_takeover = len((where / "metrics.jsonl").read_text().splitlines())
        fs, root = filesystem(str(where))
        before = committed_files(fs, root)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = (tmp_path / "run.log").read_text()
    assert code == EXIT_PERMANENT, output[-3000:]
    # Refused at its next save, or at the commit of a save already under way at the takeover.
    assert "refused: attempt 1 is stale" in output and "belongs to attempt 2 (tiny-pretrain-a2" in output
    assert committed_files(fs, root) == before  # nothing committed, nothing pruned after the takeover
    # Nor a metrics line past the one whose lease check may have passed just before the takeover.
    assert len((where / "metrics.jsonl").read_text().splitlines()) <= lines_at_takeover + 1
    failure = read_failure(str(where), attempt=1)
    assert failure is not None and failure.reason == FENCED_REASON
    assert os.path.exists(where / "checkpoints" / "step4" / "MANIFEST.json")
