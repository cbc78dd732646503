"""`spec.cluster.podTemplate`: a tenant's overlay reaches every pod of the rendered Volcano Job, merged as
Kubernetes' strategic merge patch does, and is refused (naming the field) where it oversteps the restricted
Pod Security profile or sets what the operator owns. The examples are examples/podtemplate/*.yaml."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from olmo_operator import launcher_volcano, pod_template
from olmo_operator.api import check_olmorun, parse_olmorun
from olmo_operator.pod_security import restricted_problems
from tests.operator.test_launcher import GPU_SPEC, rendered

EXAMPLES = Path(__file__).parents[2] / "examples" / "podtemplate"


def with_template(overlay: dict[str, Any], **cluster: Any) -> dict[str, Any]:
    document = copy.deepcopy(GPU_SPEC)
    document["spec"]["cluster"] = {**document["spec"]["cluster"], **cluster, "podTemplate": overlay}
    return document


def pods(document: dict[str, Any]) -> list[dict[str, Any]]:
    job = rendered(parse_olmorun(document), "pretrain", 6198)
    return [task["template"] for task in job["spec"]["tasks"]]


def example(name: str) -> dict[str, Any]:
    cluster = yaml.safe_load((EXAMPLES / name).read_text())["cluster"]
    document = copy.deepcopy(GPU_SPEC)
    document["spec"]["cluster"] = {**document["spec"]["cluster"], **cluster}
    return document


def test_the_infiniband_example_reaches_every_pod_and_keeps_what_the_operator_set() -> None:
    document = example("infiniband.yaml")
    assert check_olmorun(document) == []
    for pod, plain in zip(pods(document), pods(copy.deepcopy(GPU_SPEC)), strict=True):
        container = pod["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["NCCL_IB_HCA"].startswith("mlx5_0") and env["NCCL_SOCKET_IFNAME"] == "eth0"
        assert container["resources"]["limits"]["rdma/ib"] == "8"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"  # merged, not replaced
        assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "research"
        assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        # What the operator wrote stays: its labels, env, Secrets, security, image and command.
        assert plain["metadata"]["labels"].items() <= pod["metadata"]["labels"].items()
        before = {e["name"] for e in plain["spec"]["containers"][0]["env"]}
        assert before <= set(env)
        assert container["envFrom"] == plain["spec"]["containers"][0]["envFrom"]
        assert container["image"] == GPU_SPEC["spec"]["image"]
        assert container["command"] == plain["spec"]["containers"][0]["command"]
        assert restricted_problems(pod) == []
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", **pod}, "1.30", strict=True)


def test_the_pvc_example_mounts_the_dataset_beside_the_shared_memory_volume() -> None:
    document = example("pvc-dataset.yaml")
    assert check_olmorun(document) == []
    for pod in pods(document):
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["olmo-mix"]["persistentVolumeClaim"] == {"claimName": "olmo-mix", "readOnly": True}
        assert launcher_volcano.SHM_VOLUME in volumes  # torchx's /dev/shm volume stays
        mounts = {m["mountPath"]: m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["/data"] == "olmo-mix" and mounts["/cache"] == "hf-cache" and "/dev/shm" in mounts
        assert pod["spec"]["imagePullSecrets"] == [{"name": "registry-credentials"}]
        assert restricted_problems(pod) == []


def test_lists_merge_on_their_keys_and_the_operators_tolerations_and_labels_stay() -> None:
    overlay = {
        "metadata": {"labels": {"olmorun.dev/run": "someone-else", "team": "nlp"}},
        "spec": {
            "tolerations": [{"key": "rdma", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "trainer", "env": [{"name": "NCCL_DEBUG", "value": "INFO"}]}],
        },
    }
    pod = pods(with_template(overlay))[0]
    keys = [t["key"] for t in pod["spec"]["tolerations"]]
    assert keys == ["nvidia.com/gpu", "rdma"]  # the spec's own toleration is kept, the overlay's added
    assert (
        pod["metadata"]["labels"]["olmorun.dev/run"] == "olmo2-7b"
        and pod["metadata"]["labels"]["team"] == "nlp"
    )
    names = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert names.count("NCCL_DEBUG") == 1 and len(pod["spec"]["containers"]) == 1


@pytest.mark.parametrize(
    ("overlay", "path", "words"),
    [
        (
            {
                "spec": {
                    "containers": [
                        {"name": "trainer", "securityContext": {"capabilities": {"add": ["IPC_LOCK"]}}}
                    ]
                }
            },
            "spec.cluster.podTemplate.spec.containers[trainer].securityContext.capabilities.add",
            "NET_BIND_SERVICE",
        ),
        (
            {"spec": {"volumes": [{"name": "host", "hostPath": {"path": "/"}}]}},
            "spec.cluster.podTemplate.spec.volumes[1]",
            "hostPath",
        ),
        (
            {"spec": {"containers": [{"name": "trainer", "securityContext": {"privileged": True}}]}},
            "spec.cluster.podTemplate.spec.containers[trainer].securityContext.privileged",
            "restricted",
        ),
        ({"spec": {"hostNetwork": True}}, "spec.cluster.podTemplate.spec.hostNetwork", "restricted"),
        (
            {"spec": {"securityContext": {"runAsUser": 0}}},
            "spec.cluster.podTemplate.spec.securityContext.runAsUser",
            "must not be 0",
        ),
        ({"spec": {"containres": []}}, "spec.cluster.podTemplate.spec.containres", "no field"),
        (
            {"spec": {"containers": [{"name": "trainer", "image": "evil/image"}]}},
            "spec.cluster.podTemplate.spec.containers[0].image",
            "spec.image",
        ),
        (
            {"spec": {"serviceAccountName": "admin"}},
            "spec.cluster.podTemplate.spec.serviceAccountName",
            "spec.cluster",
        ),
        (
            {"spec": {"containers": [{"name": "sidecar", "image": "proxy"}]}},
            "spec.cluster.podTemplate.spec.containers[1].securityContext.allowPrivilegeEscalation",
            "restricted",
        ),
        ({"spec": {"volumes": [{"emptyDir": {}}]}}, "spec.cluster.podTemplate.spec.volumes", "'name'"),
        ({"metadata": {"annotations": {"a": 1}}}, "spec.cluster.podTemplate.metadata.annotations.a", ""),
    ],
    ids=[
        "ipc-lock",
        "host-path",
        "privileged",
        "host-network",
        "root",
        "typo",
        "image",
        "service-account",
        "unconfined-sidecar",
        "volume-without-name",
        "annotation-not-a-string",
    ],
)
def test_an_overlay_that_oversteps_is_refused_naming_the_field(
    overlay: dict[str, Any], path: str, words: str
) -> None:
    problems = check_olmorun(with_template(overlay))
    assert any(p.path == path and words in p.message for p in problems), problems


def test_the_policy_check_sees_the_pod_the_launcher_makes() -> None:
    """pod_template's representative pod has exactly the training pods' security settings."""
    pod = pod_template._REPRESENTATIVE_POD["spec"]
    assert pod["securityContext"] == launcher_volcano.POD_SECURITY
    assert pod["containers"][0]["securityContext"] == launcher_volcano.CONTAINER_SECURITY
    rendered_pod = pods(copy.deepcopy(GPU_SPEC))[0]["spec"]
    assert rendered_pod["securityContext"] == launcher_volcano.POD_SECURITY
