"""Trainer faults: a job interrupted several times at seeded random steps ends exactly where an
uninterrupted one does, in every kind the trainer trains (pretrain, anneal, sft, dpo, rlvr).

Each job runs under torchrun with 2 gloo processes and is interrupted twice before it is let finish:
SIGKILL of the whole process tree (a node lost, an OOM kill), and for the post-training kinds first a
SIGTERM (a preemption: it must save at the next step boundary, say so and exit 143) then two SIGKILLs.
The steps are drawn from a generator seeded by the kind (printed, so a failure can be replayed), past
the first checkpoint and increasing, so every restart resumes from a checkpoint and trains on.
After the last restart the job must have logged every step exactly once with the uninterrupted
run's losses, and its final checkpoint's content hash (the sha256 of every tensor by name: model,
optimizer and any model trained beside the policy, manifest.content_sha256) must equal the
uninterrupted run's. The uninterrupted references are shared with tests/trainer (one run per session).

Soup is not a training loop: it writes one checkpoint once (a rerun of a committed soup does nothing,
tests/trainer/test_soup.py) and is not interrupted here.
"""

from __future__ import annotations

import functools
import random
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from olmo_trainer import manifest
from olmo_trainer.layout import EXIT_PREEMPTED
from olmo_trainer.manifest import committed_steps
from olmo_trainer.storage import filesystem
from tests.trainer.dist_util import (
    kill_job,
    read_metrics,
    reference_run,
    start_torchrun,
    tiny_config,
    torchrun,
)
from tests.trainer.test_post_train import STEPS as POST_STEPS
from tests.trainer.test_post_train import post_config
from tests.trainer.test_post_train import reference as post_reference
from tests.trainer.test_resume import wait_for_step
from tests.trainer.test_rlvr import ppo_reference, rl_config

pytestmark = pytest.mark.slow
ANNEAL_STEPS = 8


def content(checkpoint: Path) -> str | None:
    """The content identity of a committed checkpoint (its MANIFEST's `content.sha256`)."""
    fs, path = filesystem(str(checkpoint))
    return manifest.content_sha256(manifest.read_manifest(fs, path))


def interrupt(kind: str, config: Path, save_dir: Path, step: int, how: signal.Signals, log: Path) -> None:
    """Start the job, wait until it has logged `step`, deliver `how` to it, wait for it to end."""
    proc = start_torchrun([kind, "--config", str(config)], log=log)
    try:
        wait_for_step(save_dir, proc, step, timeout=240)
        if how == signal.SIGKILL:
            kill_job(proc)  # torchrun and its workers (each in a session of its own)
        else:
            proc.send_signal(signal.SIGTERM)  # to torchrun, as Kubernetes does; it forwards to the workers
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            kill_job(proc)


def run_with_faults(
    kind: str, config: Path, save_dir: Path, faults: list[tuple[signal.Signals, int]], logs: Path
) -> subprocess.CompletedProcess[str]:
    """Interrupt the job once per fault, checking what each left behind; then run it to the end."""
    for index, (how, step) in enumerate(faults):
        log = logs / f"{kind}-{index}.log"
        interrupt(kind, config, save_dir, step, how, log)
        saved = [s for s, _ in committed_steps(*filesystem(str(save_dir / "checkpoints")))]
        assert saved, f"{kind}: nothing committed before fault {index} ({how.name} at step {step})"
        if how == signal.SIGTERM:  # saved where it stopped, said so, exited as preempted
            last = read_metrics(save_dir)[-1]["step"]
            text = log.read_text()
            assert f"preempted: saved step {last}, exiting {EXIT_PREEMPTED}" in text, text[-3000:]
            assert max(saved) == last, (saved, last)
    final = torchrun([kind, "--config", str(config)], timeout=400)
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-3000:]
    assert "resumed from" in final.stdout
    return final


def faults_for(
    kind: str, first: int, middle: int, last: int, *, term: bool, kills: int = 1
) -> list[tuple[signal.Signals, int]]:
    """Interruption steps drawn from a generator seeded by the kind: the first in [first, middle], then
    `kills` SIGKILLs, each after the one before and up to `last`. A SIGTERM first stops a step or two
    later (and saves there): `middle` leaves room before the final step, at which a job saves as
    finished rather than preempted, and the next fault comes at least 3 steps after it."""
    rng = random.Random(f"olmorun-faults-{kind}")
    a = rng.randint(first, middle)
    faults = [(signal.SIGTERM if term else signal.SIGKILL, a)]
    previous = a + (3 if term else 1)
    for left in range(kills, 0, -1):
        step = rng.randint(previous, last - left + 1)
        faults.append((signal.SIGKILL, step))
        previous = step + 1
    print(f"{kind}: {[(how.name, step) for how, step in faults]}")
    return faults


def assert_same_as_reference(
    save_dir: Path, reference: Path, steps: int, keys: tuple[str, ...] = ("loss",)
) -> None:
    ours, theirs = read_metrics(save_dir), read_metrics(reference)
    assert [m["step"] for m in ours] == list(range(1, steps + 1))  # redone steps replace, never repeat
    for key in keys:
        assert [m[key] for m in ours] == [m[key] for m in theirs], key
    final = f"step{steps}"
    assert content(save_dir / "checkpoints" / final) == content(reference / "checkpoints" / final) is not None


@functools.cache
def anneal_reference() -> Path:
    """An uninterrupted 2-process anneal from the pretraining reference's final checkpoint."""
    directory = Path(tempfile.mkdtemp(prefix="olmorun-anneal-ref-"))
    result = torchrun(["anneal", "--config", str(anneal_config(directory))])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return directory / "out"


def anneal_config(directory: Path) -> Path:
    parent = reference_run().save_dir / "checkpoints" / "step40"
    return tiny_config(
        directory,
        kind="anneal",
        phase="anneal",
        initFrom=str(parent),
        optim={"lr": "inherit"},
        schedule={"kind": "linear"},
        maxSteps=ANNEAL_STEPS,
        checkpoint={"intervalSteps": 2},
    )


def test_pretrain_killed_twice_ends_identical(tmp_path: Path) -> None:
    reference = reference_run().save_dir  # 40 steps, a checkpoint every 10
    config = tiny_config(tmp_path)
    run_with_faults(
        "pretrain", config, tmp_path / "out", faults_for("pretrain", 12, 30, 38, term=False), tmp_path
    )
    assert_same_as_reference(tmp_path / "out", reference, 40)


def test_anneal_killed_twice_ends_identical(tmp_path: Path) -> None:
    reference = anneal_reference()
    config = anneal_config(tmp_path)
    run_with_faults(
        "anneal", config, tmp_path / "out", faults_for("anneal", 3, 5, ANNEAL_STEPS - 1, term=False), tmp_path
    )
    assert_same_as_reference(tmp_path / "out", reference, ANNEAL_STEPS, keys=("loss", "lr"))


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_post_training_preempted_then_killed_twice_ends_identical(tmp_path: Path, kind: str) -> None:
    reference = post_reference(kind)  # 12 steps, a checkpoint every 4
    config = post_config(tmp_path, kind)
    faults = faults_for(kind, 3, 4, POST_STEPS - 1, term=True, kills=2)
    final = run_with_faults(kind, config, tmp_path / "out", faults, tmp_path)
    if kind == "dpo":
        assert "reusing reference log-probs" in final.stdout  # computed once, by the first attempt
    assert_same_as_reference(tmp_path / "out", reference, POST_STEPS)


def test_rlvr_ppo_killed_twice_inside_rollouts_ends_identical(tmp_path: Path) -> None:
    """PPO with 2 epochs per rollout, 6 steps, a checkpoint every 3: the interruptions fall inside a
    rollout, whose reuse after a restart must come from the checkpoint, not from a new sample."""
    reference = ppo_reference()
    config = rl_config(tmp_path, "ppo", ppoEpochs=2)
    run_with_faults("rlvr", config, tmp_path / "out", faults_for("rlvr", 4, 4, 5, term=False), tmp_path)
    assert_same_as_reference(
        tmp_path / "out", reference, 6, keys=("loss", "rl/reward", "rl/value_loss", "rl/kl", "tokens")
    )
