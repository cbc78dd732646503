"""A spec near the API server's object limit runs: 1.2 MB of explicit data paths, through the real kopf
operator on the emulator, which enforces the API server's size limits (tests/operator/kube.py).

kopf's default diff base (the last handled spec, copied into an annotation) would put a second 1.2 MB
copy into `metadata.annotations`, over the 256 KiB the API server allows in all; every later write of
the object would be refused (kopf #1087). The operator keeps the spec's digest there instead
(handlers.SpecDigestDiffBaseStorage); an edit of the spec still reaches the planner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.operator.kube import ANNOTATIONS_LIMIT, ETCD_LIMIT, OLMORUNS, KubeServer, OperatorThread, wait_for
from tests.operator.operator_env import NS, apply, jobs_of, olmorun, phase_state, set_job_phase, status_of

FILES = 12_500  # more than Ai2's OLMo 2 7B stage-1 file count, with full s3:// paths


def big_olmorun(name: str, storage: Path) -> dict[str, Any]:
    body = olmorun(name, storage)
    paths = [
        f"s3://ai2-llm/preprocessed/olmo-mix/v1_7/dclm/baseline-fasttext/part-{i:05d}-00000-of-11000.npy"
        for i in range(FILES)
    ]
    body["spec"]["phases"][0]["data"]["sources"] = [{"name": "dclm", "paths": paths}]
    return body


def test_a_spec_of_1_2_mb_runs_and_its_edits_still_reach_the_planner(
    kube: KubeServer, kubectl: Any, tmp_path: Path
) -> None:
    body = big_olmorun("big", tmp_path)
    size = len(json.dumps(body).encode())
    assert 1_150_000 < size < ETCD_LIMIT, size
    with OperatorThread(kube):
        apply(kubectl, body)
        wait_for(lambda: jobs_of(kube, "big").get("big-pretrain-a1"), what="the pretrain job", timeout=120)
        run = kube.get(OLMORUNS, NS, "big")
        annotations = run["metadata"].get("annotations") or {}
        used = sum(len(k) + len(str(v)) for k, v in annotations.items())
        assert used < 4096 < ANNOTATIONS_LIMIT, annotations  # no copy of the spec anywhere in metadata
        assert not kube.emulator.rejections, kube.emulator.rejections

        set_job_phase(kubectl, "big-pretrain-a1", "Running")
        wait_for(lambda: phase_state(kube, "big", "pretrain") == "Running", what="pretrain Running")
        # An edit of the big spec is seen (on.update of `spec`, through the digest): suspend the run.
        kubectl.patch_namespaced_custom_object(
            "olmorun.dev", "v1alpha1", NS, "olmoruns", "big", {"spec": {"suspend": True}}
        )
        wait_for(
            lambda: not jobs_of(kube, "big"),
            what="the suspend to reach the planner (the running job cancelled)",
            timeout=120,
        )
        message = status_of(kube, "big")["phases"]["pretrain"]["message"]
        assert message.startswith("suspended"), message
        assert not kube.emulator.rejections, kube.emulator.rejections
