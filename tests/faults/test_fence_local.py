"""`olmorun local` never runs two trainers for one job, even when the runner itself is SIGKILLed.

The issue's case: `olmorun local` killed with SIGKILL mid-pretrain leaves its torchrun processes
training (they live in sessions of their own); the rerun used to report "job ... disappeared;
resubmitted as ...-a2" and start a second writer on the same checkpoints. Now the state file records
every job's processes (pid, pgid, start time, boot id) and the rerun re-attaches to a live job or
stops leftovers before submitting anything.

- local_procs on real processes: found by their job's marker across sessions, a reused pid (same
  pid, other start time) is never taken for ours, terminate stops a process group and a worker in a
  session of its own;
- recover(): an active job's live processes are adopted (Running, then its exit status), a job the
  status no longer waits on is terminated, a job that ended meanwhile reads as its exit status;
- end to end with the real trainer, torchx and torchrun: SIGKILL the runner mid-pretrain and rerun;
  at every moment at most one job's processes train, no attempt 2 is submitted, the lease keeps one
  holder, and the final checkpoint's content hash equals an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from olmo_operator import local_procs
from olmo_operator.api import JobStatus, OlmoRunStatus, PhaseStatus
from olmo_operator.launcher_local import EXIT_FILE_ENV, LocalLauncher
from olmo_operator.local import recover
from olmo_operator.local_procs import ProcessRecord
from olmo_operator.local_state import State
from olmo_trainer import manifest
from olmo_trainer.storage import filesystem
from tests.e2e.test_local_run import OLMORUN, ROOT, _wait_for_checkpoint, small_spec, state, storage

TRAP = "trap 'echo $? > \"$OLMORUN_EXIT_FILE\"' EXIT; "


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; any left alive are killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_job(
    launcher: LocalLauncher, name: str, script: str, procs: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """A stand-in job started the way torchx starts one (its own session, the job's marker in its
    environment): a shell whose `script` may start a 'worker' in yet another session (setsid)."""
    env = {**os.environ, EXIT_FILE_ENV: str(Path(launcher.log_dir) / f"{name}.exit")}
    proc = subprocess.Popen(["bash", "-c", TRAP + script], env=env, start_new_session=True)
    procs.append(proc)
    return proc


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_parse_stat_counts_fields_after_the_last_parenthesis() -> None:
    text = "4242 (python (x) y) S 1 4242 4242 0 -1 4194560 1 0 0 0 3 1 0 0 20 0 5 0 987654 1 2 3"
    assert local_procs.parse_stat(text) == ("S", 4242, 987654)
    assert local_procs.parse_stat("garbage") is None


def test_processes_are_found_across_sessions_and_a_reused_pid_is_not_ours(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    launcher = LocalLauncher(log_dir=str(tmp_path))
    shell = start_job(launcher, "r-pretrain-a1", "setsid sleep 60 & sleep 60", spawned)
    wait_until(lambda: len(launcher.find(["r-pretrain-a1"]).get("r-pretrain-a1", [])) == 3)
    found = launcher.find(["r-pretrain-a1", "r-other-a1"])
    records = found["r-pretrain-a1"]
    assert "r-other-a1" not in found
    assert records[0].pid == shell.pid == records[0].pgid  # the shell leads its own group
    assert len({r.pgid for r in records}) == 2  # the setsid 'worker' is in a group of its own
    assert all(local_procs.alive(r) for r in records)
    reused = ProcessRecord(shell.pid, records[0].pgid, records[0].start + 1, records[0].boot)
    assert not local_procs.alive(reused)
    assert local_procs.terminate([reused], grace=0.5) == []  # never signalled
    assert shell.poll() is None

    stopped = local_procs.terminate(records, grace=5)
    assert sorted(stopped, key=lambda r: r.pid) == sorted(records, key=lambda r: r.pid)
    assert not any(local_procs.alive(r) for r in records)
    assert launcher.find(["r-pretrain-a1"]) == {}


def test_a_job_that_ignores_sigterm_is_killed_and_gone_when_terminate_returns(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    """SIGTERM ignored (as every child of a shell or harness that ignores it inherits): terminate must
    SIGKILL after the grace and return only once the processes are gone, or the caller's next attempt
    would start beside them (a clean-clone CI run once saw one still there right after return)."""
    launcher = LocalLauncher(log_dir=str(tmp_path))
    shell = start_job(launcher, "r-sft-a1", "trap '' TERM; setsid sleep 60 & sleep 60", spawned)
    wait_until(lambda: len(launcher.find(["r-sft-a1"]).get("r-sft-a1", [])) == 3)
    records = launcher.find(["r-sft-a1"])["r-sft-a1"]
    started = time.monotonic()
    assert len(local_procs.terminate(records, grace=0.5)) == 3
    assert time.monotonic() - started >= 0.5  # the grace was given before SIGKILL
    assert not any(local_procs.alive(r) for r in records)
    assert shell.wait(timeout=5) == -signal.SIGKILL


def status_with(name: str, state_: str) -> OlmoRunStatus:
    job = JobStatus.model_validate({"name": name, "seed": 6198, "state": state_, "attempts": 1})
    return OlmoRunStatus(phases={"pretrain": PhaseStatus.model_validate({"state": "Running", "jobs": [job]})})


def test_recover_adopts_what_the_status_waits_on_and_stops_the_rest(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    old = LocalLauncher(log_dir=str(tmp_path))
    start_job(old, "r-pretrain-a2", "sleep 1.5; exit 7", spawned)
    stale = start_job(old, "r-pretrain-a1", "trap 'exit 143' TERM; setsid sleep 60 & wait", spawned)
    wait_until(lambda: len(old.find(["r-pretrain-a1"]).get("r-pretrain-a1", [])) == 2)
    recorded = {
        name: [r.to_json() for r in rs] for name, rs in old.find(["r-pretrain-a1", "r-pretrain-a2"]).items()
    }
    runner_state = State({}, status_with("r-pretrain-a2", "Running"), 1, "", "", recorded)

    fresh = LocalLauncher(log_dir=str(tmp_path))  # a new runner: it started nothing itself
    out = io.StringIO()
    recover(fresh, runner_state, out, grace=5)
    lines = out.getvalue()
    assert "re-attached to job r-pretrain-a2, still running" in lines
    assert "stopping 2 leftover process(es) of job r-pretrain-a1" in lines
    assert stale.wait(timeout=5) == 143 and fresh.find(["r-pretrain-a1"]) == {}
    assert fresh.describe("r-pretrain-a2").state == "Running"
    wait_until(lambda: fresh.describe("r-pretrain-a2").state != "Running", timeout=10)
    ended = fresh.describe("r-pretrain-a2")
    assert (ended.state, ended.exit_code) == ("Failed", 7)

    # A job that ended while no runner watched: its exit status, not "disappeared".
    done = LocalLauncher(log_dir=str(tmp_path))
    (tmp_path / "r-pretrain-a3.exit").write_text("0\n")
    recover(done, State({}, status_with("r-pretrain-a3", "Running"), 1, "", "", {}), io.StringIO())
    assert done.describe("r-pretrain-a3").state == "Succeeded"
    assert LocalLauncher(log_dir=str(tmp_path)).describe("r-pretrain-a3").state == "Missing"  # not adopted


def trainers_running(workdir: Path) -> set[str]:
    """The jobs of this workdir whose training processes (`-m olmo_trainer ...`) are alive now, by marker."""
    prefix = f"{EXIT_FILE_ENV}={workdir.resolve() / 'logs'}/".encode()
    jobs = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        marker = [e for e in environ if e.startswith(prefix)]
        if b"olmo_trainer" in argv and marker:
            jobs.add(marker[0].decode())
    return jobs


def final_content(workdir: Path) -> str | None:
    job = state(workdir)["status"]["phases"]["pretrain"]["jobs"][0]
    fs, path = filesystem(job["checkpoint"])
    return manifest.content_sha256(manifest.read_manifest(fs, path))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_sigkilled_runner_rerun_re_attaches_and_never_runs_two_trainers(tmp_path: Path) -> None:
    spec = small_spec(tmp_path, pretrain_steps=24, phases=1, interval=3)
    workdir = tmp_path / "wd"
    command = [*OLMORUN, "local", str(spec), "--workdir", str(workdir), "--poll", "0.3"]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_checkpoint(storage(workdir) / "phases" / "pretrain" / "checkpoints", first)
        recorded = state(workdir)["processes"]["olmo2-tiny-pretrain-a1"]
        first.kill()  # SIGKILL: the runner cannot stop its jobs
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert recorded and all({"pid", "pgid", "start", "boot"} <= set(r) for r in recorded)
    assert len(trainers_running(workdir)) == 1, "the killed runner's trainer should still be training"

    second = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[set[str]] = []
    try:
        while second.poll() is None:
            seen.append(trainers_running(workdir))
            time.sleep(0.1)
        output = second.stdout.read() if second.stdout else ""
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, output
    assert max(len(jobs) for jobs in seen) == 1, seen  # never two trainers of this job at once
    assert "re-attached to job olmo2-tiny-pretrain-a1, still running" in output
    assert "resubmitted" not in output and "disappeared" not in output
    job = state(workdir)["status"]["phases"]["pretrain"]["jobs"][0]
    assert (job["name"], job["attempts"], job["state"]) == ("olmo2-tiny-pretrain-a1", 1, "Succeeded")
    lease = json.loads((storage(workdir) / "phases" / "pretrain" / "lease.json").read_text())
    assert (lease["attempt"], lease["job"]) == (1, "olmo2-tiny-pretrain-a1")
    steps = [
        json.loads(line)["step"]
        for line in (storage(workdir) / "phases" / "pretrain" / "metrics.jsonl").open()
    ]
    assert steps == list(range(1, 25))  # one writer: every step logged once, in order
    assert trainers_running(workdir) == set()

    reference = tmp_path / "reference"
    done = subprocess.run(
        [*OLMORUN, "local", str(spec), "--workdir", str(reference), "--poll", "0.3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert final_content(workdir) == final_content(reference) is not None


def test_a_cancelled_job_ends_every_process_it_started_even_when_torchx_calls_it_finished(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    """Issue 26 #5: a hung job's torchrun agent outlived its cancelled app for 21 minutes, because the
    launcher trusted the app's state. Here the job's shell has exited (its exit status recorded: the
    launcher reads the job as finished) while a 'worker' in a session of its own, ignoring SIGTERM as a
    hung process does, runs on. Cancelling it SIGTERMs every process with the job's marker, and once
    the grace is over they are killed: no process of the attempt survives."""
    launcher = LocalLauncher(log_dir=str(tmp_path))
    launcher.cancel_grace = 0.5
    name = "r-pretrain-a1"
    shell = start_job(launcher, name, "setsid bash -c \"trap '' TERM; sleep 120\" & sleep 1; exit 3", spawned)
    wait_until(lambda: len(launcher.find([name]).get(name, [])) == 3)
    # What the app's state follows is the job's shell only (torchx follows its own child).
    launcher.adopt(name, [r for r in launcher.find([name])[name] if r.pid == shell.pid])
    wait_until(lambda: launcher.has_exit_status(name))
    [worker] = [r for r in launcher.find([name])[name] if r.pgid != shell.pid]
    assert launcher.describe(name).state == "Failed"  # finished, as far as the app is concerned
    assert local_procs.alive(worker)

    launcher.cancel(name)
    assert local_procs.alive(worker)  # SIGTERM ignored: it has its grace
    launcher.wait_cancelled()
    assert not local_procs.alive(worker)
    assert launcher.find([name]) == {} and launcher.processes() == {}


def test_cancel_sigterms_every_session_of_the_job_and_a_clean_exit_needs_no_kill(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    launcher = LocalLauncher(log_dir=str(tmp_path))
    name = "r-anneal-a1"
    shell = start_job(launcher, name, "setsid sleep 120 & sleep 120", spawned)
    wait_until(lambda: len(launcher.find([name]).get(name, [])) == 3)
    launcher.adopt(name, launcher.find([name])[name])
    started = time.monotonic()
    launcher.cancel(name)
    launcher.wait_cancelled()
    assert time.monotonic() - started < launcher.cancel_grace  # SIGTERM was enough: no wait for the kill
    assert launcher.find([name]) == {} and shell.wait(timeout=5) != 0
    assert launcher.describe(name).state == "Missing"
