"""The launchers: the pure JobRequest and AppDefs, the rendered Volcano Jobs (golden files), the Kubernetes
adapter against the emulated API server (tests/operator/kube.py), and local processes.

Regenerate the golden files after an intended change: `OLMORUN_UPDATE_GOLDEN=1 pytest
tests/operator/test_launcher.py`.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes
import kubernetes_validate
import pytest
import yaml

from olmo_operator import layout
from olmo_operator.api import OlmoRun, parse_olmorun
from olmo_operator.launcher import cpu_cores, memory_mb
from olmo_operator.launcher_local import LocalLauncher
from olmo_operator.launcher_local import app_def as local_app
from olmo_operator.launcher_volcano import VolcanoLauncher
from olmo_operator.layout import job_name
from olmo_operator.request import (
    LABEL_ATTEMPT,
    LABEL_PHASE,
    LABEL_RUN,
    LABEL_RUN_UID,
    JobRequest,
    job_request,
)
from tests.operator.kube import VCJOBS, KubeServer

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("OLMORUN_UPDATE_GOLDEN") == "1"
EXAMPLES = Path(__file__).parents[2] / "examples"

GPU_SPEC: dict[str, Any] = {
    "apiVersion": "olmorun.dev/v1alpha1",
    "kind": "OlmoRun",
    "metadata": {"name": "olmo2-7b", "namespace": "research", "uid": "0f1e2d3c-aaaa-bbbb-cccc-000000000001"},
    "spec": {
        "image": "registry.example/olmorun-trainer@sha256:" + "ab" * 32,
        "model": {"preset": "olmo2-7b"},
        "storage": {
            "uri": "s3://olmo-bucket/runs",
            "secretRef": {"name": "s3-credentials"},
            "endpointUrl": "https://s3.example.internal",
            "scratchUri": "file:///scratch/olmo",
        },
        "cluster": {
            "gpusPerNode": 8,
            "cpu": "96",
            "memory": "1600Gi",
            "shmSize": "64Gi",
            "nodeSelector": {"node.kubernetes.io/instance-type": "p5.48xlarge"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "topology.example/block", "operator": "In", "values": ["b1"]}
                                ]
                            }
                        ]
                    }
                }
            },
            "queue": "training",
            "priorityClassName": "research-high",
            "serviceAccountName": "olmo-trainer",
        },
        "tracking": {"wandb": {"project": "olmo2", "entity": "ai2", "secretRef": {"name": "wandb"}}},
        "phases": [
            {
                "name": "pretrain",
                "kind": "pretrain",
                "nodes": 4,
                "maxTokens": "4T",
                "data": {"sources": [{"name": "dclm", "paths": ["s3://data/dclm/*.npy"]}]},
                "batch": {"globalBatchSize": 1024, "microBatchSize": 2},
            }
        ],
    },
}


def tiny() -> OlmoRun:
    return parse_olmorun(yaml.safe_load((EXAMPLES / "olmorun-tiny.yaml").read_text()))


def gpu_run() -> OlmoRun:
    return parse_olmorun(GPU_SPEC)


def request_of(run: OlmoRun, phase_name: str, seed: int, attempt: int = 1) -> JobRequest:
    phase = run.phase(phase_name)
    return job_request(run, phase, seed, attempt, layout.config_uri(run, phase, seed))


def rendered(run: OlmoRun, phase_name: str, seed: int, attempt: int = 1) -> dict[str, Any]:
    return VolcanoLauncher(run.namespace).render(request_of(run, phase_name, seed, attempt))


def check_golden(name: str, manifest: dict[str, Any]) -> None:
    path = GOLDEN / f"{name}.yaml"
    text = yaml.safe_dump(manifest, sort_keys=False)
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with OLMORUN_UPDATE_GOLDEN=1 to create it"
    assert yaml.safe_load(path.read_text()) == manifest, (
        f"{path} drifted; review, then OLMORUN_UPDATE_GOLDEN=1"
    )


# ---------------------------------------------------------------------------------------------
# Golden Volcano Jobs
# ---------------------------------------------------------------------------------------------


def test_golden_gpu_multinode_job() -> None:
    check_golden("olmo2-7b-pretrain-a1", rendered(gpu_run(), "pretrain", 6198))


def test_golden_tiny_anneal_seed_job() -> None:
    check_golden("olmo2-tiny-anneal-s42-a2", rendered(tiny(), "anneal", 42, attempt=2))


def test_render_is_deterministic() -> None:
    assert rendered(gpu_run(), "pretrain", 6198) == rendered(gpu_run(), "pretrain", 6198)


def test_rendering_leaves_the_kubernetes_client_defaults_and_log_levels_alone() -> None:
    """torchx builds its V1 models without a configuration; each used to make a fresh one, whose
    `debug` setter reset the client's loggers to WARNING on every render (and cost half its CPU)."""
    client_logger = logging.getLogger("urllib3")
    before = client_logger.level
    client_logger.setLevel(logging.DEBUG)
    try:
        rendered(tiny(), "pretrain", 42)
        assert client_logger.level == logging.DEBUG
    finally:
        client_logger.setLevel(before)
    # the shared configuration lasted one dry run: the client's default is a fresh object again
    first, second = (
        kubernetes.client.Configuration.get_default_copy(),
        kubernetes.client.Configuration.get_default_copy(),
    )
    assert first is not second


def test_every_pod_template_is_a_valid_kubernetes_pod() -> None:
    manifest = rendered(gpu_run(), "pretrain", 6198)
    tasks = manifest["spec"]["tasks"]
    assert [t["name"] for t in tasks] == ["trainer-0", "trainer-1", "trainer-2", "trainer-3"]
    for task in tasks:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, **task["template"]}
        kubernetes_validate.validate(pod, "1.30", strict=True)


def test_job_metadata_names_labels_and_owner() -> None:
    manifest = rendered(gpu_run(), "pretrain", 6198, attempt=3)
    meta = manifest["metadata"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch.volcano.sh/v1alpha1", "Job")
    assert (meta["name"], meta["namespace"]) == ("olmo2-7b-pretrain-a3", "research")
    assert meta["labels"] == {
        LABEL_RUN: "olmo2-7b",
        LABEL_PHASE: "pretrain",
        "olmorun.dev/seed": "6198",
        LABEL_ATTEMPT: "3",
        LABEL_RUN_UID: "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "olmorun.dev/v1alpha1",
            "kind": "OlmoRun",
            "name": "olmo2-7b",
            "uid": "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    spec = manifest["spec"]
    assert (spec["queue"], spec["priorityClassName"], spec["schedulerName"]) == (
        "training",
        "research-high",
        "volcano",
    )
    # The operator retries, with backoff, resuming from checkpoints: Volcano never does. 0 would be Volcano's
    # default 3 (tests/faults/test_volcano_eviction.py plays what Volcano does with these).
    assert spec["maxRetry"] == 1 and [p["action"] for p in spec["policies"]] == [
        "TerminateJob",
        "TerminateJob",
        "RestartJob",
    ]
    # torchx's random app id is gone everywhere: the deterministic name makes resubmission idempotent.
    assert "olmo2-7b-pretrain-a3-" not in yaml.safe_dump(manifest).replace("olmo2-7b-pretrain-a3-trainer", "")


def test_pods_get_placement_resources_shm_and_secrets_only_by_reference() -> None:
    manifest = rendered(gpu_run(), "pretrain", 6198)
    pod = manifest["spec"]["tasks"][1]["template"]
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"node.kubernetes.io/instance-type": "p5.48xlarge"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "nodeAffinity" in spec["affinity"]
    assert (spec["priorityClassName"], spec["serviceAccountName"]) == ("research-high", "olmo-trainer")
    assert spec["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}}]
    [container] = spec["containers"]
    resources = container["resources"]
    assert resources["limits"] == {"cpu": "96", "memory": "1600Gi", "nvidia.com/gpu": "8"}  # as written
    assert resources["requests"] == resources["limits"]
    assert container["envFrom"] == [
        {"secretRef": {"name": "s3-credentials"}},
        {"secretRef": {"name": "wandb"}},
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["OLMORUN_CONFIG"] == "s3://olmo-bucket/runs/research/olmo2-7b/phases/pretrain/config.json"
    assert (env["OLMORUN_RUN"], env["OLMORUN_PHASE"], env["OLMORUN_SEED"]) == ("olmo2-7b", "pretrain", "6198")
    assert env["AWS_ENDPOINT_URL"] == "https://s3.example.internal"
    assert not any("SECRET" in name or "KEY" in name or "TOKEN" in name for name in env)
    command = container["command"][2]
    assert "--nnodes 4 --nproc_per_node 8" in command
    # Replica 1 finds rank 0 through Volcano's env plugin; replica 0 uses localhost.
    assert "--rdzv_endpoint ${VC_TRAINER_0_HOSTS:=localhost}:29500" in command
    assert (
        "-m olmo_trainer pretrain --config s3://olmo-bucket/runs/research/olmo2-7b/phases/pretrain/config.json"
        in command
    )


# ---------------------------------------------------------------------------------------------
# The pure AppDef
# ---------------------------------------------------------------------------------------------


def test_the_request_is_built_once_from_the_spec() -> None:
    request = request_of(gpu_run(), "pretrain", 6198, attempt=2)
    assert request.name == "olmo2-7b-pretrain-a2"
    assert request.command == [
        "-m",
        "olmo_trainer",
        "pretrain",
        "--config",
        "s3://olmo-bucket/runs/research/olmo2-7b/phases/pretrain/config.json",
    ]
    assert request.config_uri == request.command[-1] == request.env["OLMORUN_CONFIG"]
    assert (request.resources.cpu, request.resources.memory, request.resources.gpus) == ("96", "1600Gi", 8)
    assert (request.placement.nodes, request.placement.procs_per_node, request.placement.queue) == (
        4,
        8,
        "training",
    )
    assert request.secret_refs == ["s3-credentials", "wandb"]
    assert request.owner.uid == "0f1e2d3c-aaaa-bbbb-cccc-000000000001"


def test_single_host_runs_every_process_of_every_node_locally(tmp_path: Path) -> None:
    app = local_app(request_of(gpu_run(), "pretrain", 6198), str(tmp_path / "x.exit"))
    [role] = app.roles
    assert role.num_replicas == 1
    assert "--nnodes 1 --nproc_per_node 32" in role.args[1]
    assert "--rdzv_endpoint localhost:0" in role.args[1]


def test_the_wrapper_turns_sigterm_into_exit_143_and_keeps_other_exit_codes(tmp_path: Path) -> None:
    """Run the exact shell line of a local job with a stand-in `torchrun` on PATH (a real bash, real
    signals): the exit code is the process's and is also recorded where LocalLauncher reads it."""
    exit_file = tmp_path / "job.exit"
    app = local_app(request_of(tiny(), "pretrain", 6198), str(exit_file))
    script = app.roles[0].args[1].replace("$$", "$")
    fake = tmp_path / "torchrun"
    fake.write_text('#!/bin/bash\nif [ "$FAKE" = sleep ]; then sleep 30; fi\nexit "${FAKE:-0}"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "OLMORUN_EXIT_FILE": str(exit_file)}
    assert subprocess.run(["bash", "-c", script], env={**env, "FAKE": "3"}, timeout=30).returncode == 3
    assert exit_file.read_text().strip() == "3"
    assert subprocess.run(["bash", "-c", script], env={**env, "FAKE": "0"}, timeout=30).returncode == 0
    proc = subprocess.Popen(["bash", "-c", script], env={**env, "FAKE": "sleep"})
    import time

    time.sleep(0.5)
    proc.terminate()
    assert proc.wait(timeout=10) == 143
    assert exit_file.read_text().strip() == "143"


def test_local_launcher_runs_a_job_and_reads_its_exit_code(tmp_path: Path) -> None:
    """torchx local_cwd with real processes (torchrun, python): a job whose worker exits 7 reads Failed."""
    launcher = LocalLauncher(log_dir=str(tmp_path))
    request = request_of(tiny(), "pretrain", 6198)
    script = tmp_path / "fail.py"
    script.write_text("import sys\nsys.exit(7)\n")
    bad = JobRequest(**{**request.__dict__, "command": [str(script)]})
    launcher.submit(bad)
    assert launcher.submit(bad) == launcher.submit(bad)  # idempotent by name
    import time

    deadline = time.monotonic() + 120
    while (observed := launcher.describe(bad.name)).state in (
        "Pending",
        "Running",
    ) and time.monotonic() < deadline:
        time.sleep(0.5)
    # torchrun reports a failed worker as exit 1; the job's shell recorded it, torchx does not say
    assert (observed.state, observed.exit_code, observed.preempted) == ("Failed", 1, False)
    assert observed.message.startswith("exit code 1; logs: ")
    assert launcher.describe("never-submitted").state == "Missing"


@pytest.mark.parametrize(
    ("quantity", "cores", "mb"),
    [("96", 96.0, None), ("500m", 0.5, None), (None, 0.0, 0), ("1600Gi", None, 1717987), ("512M", None, 512)],
)
def test_quantities(quantity: str | None, cores: float | None, mb: int | None) -> None:
    if cores is not None:
        assert cpu_cores(quantity) == cores
    if mb is not None:
        assert memory_mb(quantity) == mb


def test_job_name_is_bounded() -> None:
    run = parse_olmorun({**GPU_SPEC, "metadata": {"name": "n" * 63}})
    name = job_name(run, run.phase("pretrain"), 6198, 100)
    assert len(name) <= 63 and name.endswith("-a100")
    assert len(f"{name}-trainer-999-0") <= 63, "Volcano pod hostnames must stay DNS labels"


# ---------------------------------------------------------------------------------------------
# Kubernetes adapter against the emulated API server
# ---------------------------------------------------------------------------------------------


def _set_phase(kube: KubeServer, name: str, phase: str) -> None:
    api = kubernetes.client.CustomObjectsApi(kube.api_client())
    api.patch_namespaced_custom_object_status(
        "batch.volcano.sh", "v1alpha1", "research", "jobs", name, {"status": {"state": {"phase": phase}}}
    )


def _pod(kube: KubeServer, job: str, exit_code: int, reason: str | None = None) -> None:
    core = kubernetes.client.CoreV1Api(kube.api_client())
    body = {
        "metadata": {"name": f"{job}-trainer-0-0", "labels": {"volcano.sh/job-name": job}},
        "spec": {"containers": [{"name": "trainer-0", "image": "x"}]},
    }
    core.create_namespaced_pod("research", body)
    status = {
        "containerStatuses": [
            {
                "name": "trainer-0",
                "image": "x",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code}},
            }
        ]
    }
    if reason:
        status["reason"] = reason
    core.patch_namespaced_pod_status(f"{job}-trainer-0-0", "research", {"status": status})


def test_kubernetes_submit_is_idempotent_describe_maps_states_and_cancel_deletes() -> None:
    run = gpu_run()
    phase = run.phase("pretrain")
    with KubeServer() as kube:
        launcher = VolcanoLauncher("research", api_client=kube.api_client())
        request = job_request(run, phase, 6198, 1, layout.config_uri(run, phase, 6198))
        name = request.name
        assert launcher.describe(name).state == "Missing"
        assert launcher.submit(request) == f"research:{name}"
        assert launcher.submit(request) == f"research:{name}"  # 409 Conflict: already submitted
        assert kube.ever_created(VCJOBS) == [name]
        stored = kube.get(VCJOBS, "research", name)
        assert stored is not None and stored["metadata"]["ownerReferences"][0]["uid"] == run.metadata.uid
        assert launcher.describe(name).state == "Pending"
        _set_phase(kube, name, "Running")
        assert launcher.describe(name).state == "Running"
        _set_phase(kube, name, "Completed")
        assert launcher.describe(name).state == "Succeeded"
        launcher.cancel(name)
        launcher.cancel(name)  # already gone: not an error
        assert launcher.describe(name).state == "Missing"


@pytest.mark.parametrize(
    ("phase", "exit_code", "reason", "preempted"),
    [
        ("Failed", 1, None, False),
        ("Failed", 143, None, True),
        ("Failed", 137, "Evicted", True),
        ("Terminated", 0, None, True),
    ],
    ids=["crash", "sigterm", "evicted", "terminated"],
)
def test_kubernetes_failures_tell_preemption_from_crashes(
    phase: str, exit_code: int, reason: str | None, preempted: bool
) -> None:
    run = gpu_run()
    with KubeServer() as kube:
        launcher = VolcanoLauncher("research", api_client=kube.api_client())
        request = job_request(run, run.phase("pretrain"), 6198, 1, "s3://x/config.json")
        name = request.name
        launcher.submit(request)
        _pod(kube, name, exit_code, reason)
        _set_phase(kube, name, phase)
        observed = launcher.describe(name)
        assert observed.state == "Failed" and observed.preempted is preempted
        if exit_code:
            assert observed.exit_code == exit_code


def test_a_job_suspended_with_vcctl_waits_with_a_notice_until_it_is_resumed() -> None:
    """`vcctl job suspend` (AbortJob: Aborted) is a person's decision, not preemption: the job is not
    failed nor resubmitted as the next attempt; describe says Pending with the command that resumes it,
    and the Job is Running again once `vcctl job resume` (ResumeJob) restarted it."""
    run = gpu_run()
    with KubeServer() as kube:
        launcher = VolcanoLauncher("research", api_client=kube.api_client())
        request = job_request(run, run.phase("pretrain"), 6198, 1, "s3://x/config.json")
        launcher.submit(request)
        _set_phase(kube, request.name, "Aborted")
        observed = launcher.describe(request.name)
        assert (observed.state, observed.preempted, observed.exit_code) == ("Pending", False, None)
        assert observed.notice is not None and observed.notice[0] == "JobSuspended"
        assert f"vcctl job resume -N {request.name} -n research" in observed.notice[1]
        _set_phase(kube, request.name, "Running")
        assert launcher.describe(request.name).state == "Running"


# ---------------------------------------------------------------------------------------------
# olmorun render
# ---------------------------------------------------------------------------------------------


def test_olmorun_render_prints_every_config_and_job_and_submits_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from olmo_operator.cli import main

    assert main(["render", str(EXAMPLES / "olmorun-tiny.yaml"), "--namespace", "demo"]) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    jobs = [d for d in documents if d.get("kind") == "Job"]
    configs = [d for d in documents if "saveDir" in d]
    assert [j["metadata"]["name"] for j in jobs] == [
        "olmo2-tiny-pretrain-a1",
        "olmo2-tiny-anneal-s42-a1",
        "olmo2-tiny-anneal-s42069-a1",
        "olmo2-tiny-soup-a1",
        "olmo2-tiny-sft-a1",
        "olmo2-tiny-dpo-a1",
        "olmo2-tiny-rlvr-a1",
    ]
    assert all(j["metadata"]["namespace"] == "demo" for j in jobs)
    assert [(c["phase"], c["seed"]) for c in configs] == [
        ("pretrain", 6198),
        ("anneal", 42),
        ("anneal", 42069),
        ("soup", 6198),
        ("sft", 6198),
        ("dpo", 6198),
        ("rlvr", 6198),
    ]  # one config per job, as the planner submits them (tests/operator/test_preview.py)
    root = "file:///tmp/olmorun/storage/default/olmo2-tiny"
    # The steps the budgets end at: 400K / (16 x 128) -> 196, 100K / (16 x 128) -> 49.
    assert configs[1]["initFrom"] == f"{root}/archive/pretrain/step196"
    assert configs[3]["soupFrom"] == [
        f"{root}/archive/anneal-s42/step49",
        f"{root}/archive/anneal-s42069/step49",
    ]


def test_olmorun_render_names_every_problem_of_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from olmo_operator.cli import main

    bad = yaml.safe_load((EXAMPLES / "olmorun-tiny.yaml").read_text())
    bad["spec"]["phases"][1]["from"] = "nowhere"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["render", str(path)]) == 2
    err = capsys.readouterr().err
    assert "spec.phases[1].from" in err and "Traceback" not in err


def test_a_soup_is_one_process_on_one_node_without_gpus() -> None:
    run = parse_olmorun(
        {
            **GPU_SPEC,
            "spec": {
                **GPU_SPEC["spec"],
                "phases": [
                    *GPU_SPEC["spec"]["phases"],
                    {
                        "name": "anneal",
                        "kind": "anneal",
                        "from": "pretrain",
                        "seeds": [1, 2],
                        "nodes": 2,
                        "maxTokens": "50B",
                        "data": GPU_SPEC["spec"]["phases"][0]["data"],
                        "batch": {"globalBatchSize": 1024, "microBatchSize": 2},
                    },
                    {"name": "soup", "kind": "soup", "from": "anneal"},
                ],
            },
        }
    )
    manifest = rendered(run, "soup", 6198)
    [task] = manifest["spec"]["tasks"]
    [container] = task["template"]["spec"]["containers"]
    assert "--nnodes 1 --nproc_per_node 1" in container["command"][2]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert task["template"]["spec"]["nodeSelector"] == {"node.kubernetes.io/instance-type": "p5.48xlarge"}
