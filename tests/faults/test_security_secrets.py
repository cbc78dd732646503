"""No value of a referenced Secret appears anywhere the operator, the jobs or the reports write.

A run on the kmock emulator with the real kopf operator (tests/operator/kube.py), its storage on a
real S3 server (SeaweedFS) that checks the credentials, and a wandb Secret: the operator holds the
storage keys and the wandb key in its environment, as its Deployment's `envFrom` gives them, and uses
the storage keys for everything it writes (run.json, configs, the verified archive). The test plays
Volcano (the Job's phase) and the trainer (env.json written by the trainer's own code with the keys in
its environment, a metrics line, a committed checkpoint). Then it scans, for the VALUES of the keys:
the OlmoRun's status, every Event, every log record of the operator and kopf (DEBUG, unfiltered),
every rendered Volcano Job, every object of the run's storage (run.json, configs, env.json,
metrics, MANIFESTs), and the `olmorun report` HTML. Mocked edge: none (wandb itself is never
contacted: the key only has to stay out of what is written).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from olmo_operator import api, layout
from olmo_operator.report import write_report
from olmo_trainer import manifest
from olmo_trainer.config import TrainConfig
from olmo_trainer.environment import write_env
from olmo_trainer.storage import filesystem
from tests.dcp_files import dcp_metadata
from tests.operator.kube import OLMORUNS, VCJOBS, KubeServer, OperatorThread, wait_for
from tests.operator.operator_env import NS, apply, events_of, jobs_of, olmorun, set_job_phase, status_of
from tests.s3server import S3Server

pytestmark = pytest.mark.slow
WANDB_KEY = "wandbkey-3f9c1e7a5b2d4c6e8f0a1b3c5d7e9f1a2b4c6d8e"


def leaks(corpus: dict[str, str], secrets: dict[str, str]) -> list[str]:
    """`<where>: <secret name>` for every secret value found in a text of the corpus."""
    return [
        f"{where}: {name}"
        for where, text in corpus.items()
        for name, value in secrets.items()
        if value in text
    ]


def storage_texts(root: str, options: dict[str, Any]) -> dict[str, str]:
    """Every object under the run's root, as text (binary shards decoded with replacement)."""
    fs, path = filesystem(root, **options)
    fs.invalidate_cache()
    return {str(name): bytes(fs.cat_file(str(name))).decode(errors="replace") for name in fs.find(path)}


def commit_final(save_dir: str, step: int, options: dict[str, Any]) -> None:
    """What the trainer leaves at the end: a metrics line and a committed final checkpoint."""
    fs, root = filesystem(save_dir, **options)
    fs.pipe_file(
        f"{root}/metrics.jsonl", json.dumps({"step": step, "tokens": 64, "loss": 3.5}).encode() + b"\n"
    )
    directory = layout.step_uri(layout.checkpoints_dir(root), step)
    fs.pipe_file(f"{directory}/__0_0.distcp", b"weights")
    fs.pipe_file(f"{directory}/.metadata", dcp_metadata(["__0_0.distcp"]))
    manifest.commit(fs, directory, manifest.build_manifest(fs, directory, step=step, extra={"final": True}))


def test_no_secret_value_reaches_status_events_logs_jobs_records_or_reports(
    kube: KubeServer,
    kubectl: Any,
    s3_server: S3Server,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secrets = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "WANDB_API_KEY": WANDB_KEY,
    }
    assert all(len(value) >= 6 for value in secrets.values())  # long enough that a match means a leak
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)  # the operator's (and the trainer's) environment, from the Secrets
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)  # the job's env (request.job_env) has it
    bucket = s3_server.make_bucket("secret-scan")
    body = olmorun("keys", tmp_path)
    body["spec"]["storage"] = {
        "uri": f"{bucket}/olmo",
        "secretRef": {"name": "s3-credentials"},
        "endpointUrl": s3_server.endpoint_url,
    }
    body["spec"]["tracking"] = {"wandb": {"project": "olmo2", "secretRef": {"name": "wandb"}}}
    options = s3_server.storage_options()
    caplog.set_level(logging.DEBUG)

    with OperatorThread(kube):
        apply(kubectl, body)
        wait_for(lambda: jobs_of(kube, "keys").get("keys-pretrain-a1"), what="the pretrain job")
        run = api.parse_olmorun(kube.get(OLMORUNS, NS, "keys") or {})
        phase = run.phase("pretrain")
        save = layout.save_dir(run, phase, run.spec.seed)
        fs, config_path = filesystem(layout.config_uri(run, phase, run.spec.seed), **options)
        write_env(TrainConfig.model_validate_json(fs.cat_file(config_path)))  # the trainer's run record
        set_job_phase(kubectl, "keys-pretrain-a1", "Running")
        commit_final(save, 4, options)
        set_job_phase(kubectl, "keys-pretrain-a1", "Completed")
        wait_for(
            lambda: status_of(kube, "keys").get("stage") == "Succeeded", timeout=60, what="the run to succeed"
        )

    # The operator's records: kopf's loop and its handler threads. The test's own storage calls (it plays
    # the trainer and the user, in the main thread) are other processes' logs in a real deployment.
    operator_logs = [r for r in caplog.records if r.threadName != "MainThread"]
    root = layout.run_root(run)
    report = write_report(root, str(tmp_path / "report.html"))
    html = Path(report).read_text()
    stored = storage_texts(root, options)
    events = events_of(kube, "keys")
    corpus = {
        "status": json.dumps(kube.get(OLMORUNS, NS, "keys")),
        "events": json.dumps(events),
        "operator logs": "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in operator_logs),
        "jobs": json.dumps(kube.objects(VCJOBS, NS)),
        "report": html,
        **{f"storage {name}": text for name, text in stored.items()},
    }
    # The corpus is what a leak would be in: a run that went all the way, with every record present.
    names = {name.rsplit("/", 1)[-1] for name in stored}
    assert {"run.json", "config.json", "env.json", "metrics.jsonl", "MANIFEST.json"} <= names, names
    assert any("/archive/pretrain/step4/" in name for name in stored)
    # Events: at least the submission and the success (a Running seen in between depends on the poll).
    reasons = [e.get("reason") for e in events]
    assert "keys" in html and len(events) >= 2 and "JobSucceeded" in reasons and len(operator_logs) > 50, (
        reasons
    )
    assert any(r.name.startswith("botocore") for r in operator_logs)  # its storage requests were logged too
    job = next(iter(kube.objects(VCJOBS, NS).values()))
    assert {"secretRef": {"name": "wandb"}} in job["spec"]["tasks"][0]["template"]["spec"]["containers"][0][
        "envFrom"
    ]
    # The scan finds a secret wherever one is: checked on a planted one before trusting its silence.
    assert leaks({"planted": f"key={WANDB_KEY};"}, secrets) == ["planted: WANDB_API_KEY"]

    assert leaks(corpus, secrets) == []
