"""Every command of the README's "On a cluster" section, run as far as this machine allows.

helm commands: rendered by the Helm SDK with exactly their flags (`--set` parsed by Helm's own parser) and
every object validated. kubectl commands: the real /usr/bin/kubectl against the emulated API server
(tests/operator/kube.py), with a kubeconfig pointing at it. Where the emulator cannot serve a command as a
cluster would, the README says so and the handler below says how it is checked instead; a command with
no handler fails the test, so the README cannot grow an untested command.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes
import kubernetes_validate
import pytest
import yaml

from olmo_operator import api, crd
from olmo_operator.archive import storage_options
from olmo_trainer.tracking import wandb_mode
from tests.deploy import chart
from tests.operator.kube import CRDS, OLMORUNS, KubeServer, wait_for

ROOT = Path(__file__).parents[2]


def readme_commands() -> list[list[str]]:
    """The commands of the ```bash blocks of "## On a cluster", in order, as argument lists."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## On a cluster") : text.index("\n## ", text.index("## On a cluster") + 5)]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(shlex.split(line, comments=True))
    return commands


class Cluster:
    """The emulated API server with the CRD (and CRDs themselves) served, and a kubeconfig for kubectl."""

    def __init__(self, kube: KubeServer, tmp_path: Path) -> None:
        self.kube = kube
        config = tmp_path / "kubeconfig"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "emulator",
                    "clusters": [{"name": "emulator", "cluster": {"server": kube.url}}],
                    "contexts": [
                        {
                            "name": "emulator",
                            "context": {"cluster": "emulator", "user": "u", "namespace": "default"},
                        }
                    ],
                    "users": [{"name": "u", "user": {}}],
                }
            )
        )
        self.env = {"KUBECONFIG": str(config), "PATH": os.environ["PATH"], "HOME": str(tmp_path)}

    def kubectl(self, args: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        return result


@pytest.fixture(name="cluster")
def cluster_fixture(tmp_path: Path) -> Iterator[Cluster]:
    with KubeServer([crd.build_crd()]) as kube:
        yield Cluster(kube, tmp_path)
        assert kube.emulator.rejections == [], kube.emulator.rejections


def _option(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name:
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def helm_render(cluster: Cluster, args: list[str]) -> str:
    """`helm install|upgrade NAME CHART -n NS [--set ...]`: the Helm SDK renders exactly that, offline.

    An upgrade must take the new chart's defaults (`--reset-then-reuse-values`, never `--reuse-values`
    alone: helm/helm#9000); the upgrade itself, from the first chart, is tests/deploy/test_chart_upgrade.py.
    """
    if args[1] == "upgrade":
        assert "--reset-then-reuse-values" in args and "--reuse-values" not in args, args
    name, path = [
        a
        for a in args[2:]
        if not a.startswith("-")
        and a != _option(args, "-n", "--namespace")
        and a not in [_option(args, "--set")]
    ][:2]
    assert (ROOT / path) == chart.CHART
    values: dict[str, Any] = {}
    for i, arg in enumerate(args):
        if arg == "--set":  # parsed by Helm's own --set parser
            values = _merge(values, helm.parse_set_string(args[i + 1]))
    objects = chart.render(values, name=name, namespace=_option(args, "-n", "--namespace") or "default")
    for obj in objects:
        kubernetes_validate.validate(obj, "1.30", strict=True)
    container = chart.find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    if "envFrom" in values:
        assert container["envFrom"] == values["envFrom"]
    return f"rendered {len(objects)} objects"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def create_secret(cluster: Cluster, args: list[str]) -> str:
    """`kubectl create secret generic`: a client-side dry run (no Secret is created or read here), and
    the keys must be the variables the operator or the trainer read."""
    result = cluster.kubectl([*args, "--dry-run=client", "-o", "yaml"])
    assert result.returncode == 0, result.stderr
    secret = yaml.safe_load(result.stdout)
    kubernetes_validate.validate(secret, "1.30", strict=True)
    env = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    if secret["metadata"]["name"] == "wandb":
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("WANDB_MODE", raising=False)
            for key, value in env.items():
                mp.setenv(key, value)
            assert wandb_mode() == "online"
    else:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            options = storage_options("s3://my-bucket/olmo")
        assert (
            options["key"] == env["AWS_ACCESS_KEY_ID"] and options["secret"] == env["AWS_SECRET_ACCESS_KEY"]
        )
    return "dry run"


def create_namespace(cluster: Cluster, args: list[str]) -> str:
    """The emulator has a fixed set of namespaces: a client-side dry run, validated."""
    result = cluster.kubectl([*args, "--dry-run=client", "-o", "yaml"])
    assert result.returncode == 0, result.stderr
    kubernetes_validate.validate(yaml.safe_load(result.stdout), "1.30", strict=True)
    return "dry run"


def kubectl(cluster: Cluster, args: list[str]) -> str:
    """Any other kubectl command, run against the emulator; a few need a flag or a precondition."""
    args = list(args)
    verb = args[1]
    if verb == "apply":
        # The emulator serves no OpenAPI document for kubectl's client-side validation; the OlmoRun is checked
        # against the CRD schema by the emulator, the CRD by kubernetes-validate (tests/operator/test_crd.py).
        args.insert(2, "--validate=false")
    if verb == "get" and "-w" in args:
        args.append("--request-timeout=3s")  # a watch never ends by itself
    if verb == "wait":
        # What the operator writes when the run's last phase succeeds (tests/e2e: the lifecycle test).
        name = args[-2].split("/")[1] if args[-1].startswith("--timeout") else args[-1].split("/")[1]
        kubernetes.client.CustomObjectsApi(cluster.kube.api_client()).patch_namespaced_custom_object_status(
            api.GROUP,
            api.VERSION,
            "default",
            api.PLURAL,
            name,
            {
                "status": {
                    "stage": "Succeeded",
                    "conditions": [
                        {
                            "type": "Succeeded",
                            "status": "True",
                            "reason": "Succeeded",
                            "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z",
                        }
                    ],
                }
            },
        )
    result = cluster.kubectl(args)
    assert result.returncode == 0, f"{shlex.join(args)}: {result.stderr}"
    if verb == "apply" and "examples/" in " ".join(args):
        assert wait_for(lambda: cluster.kube.get(OLMORUNS, "default", "olmo2-7b"), what="the OlmoRun")
    if verb == "get":
        assert "olmo2-7b" in result.stdout
    if verb == "describe":
        assert "Name:         olmo2-7b" in result.stdout and "Kind:         OlmoRun" in result.stdout
    if verb == "delete" and args[2] == "olmo":
        assert cluster.kube.objects(OLMORUNS) == {}
    if verb == "delete" and args[2] == "crd":
        assert cluster.kube.objects(CRDS) == {}
    if verb == "apply" and "crds/" in " ".join(args):
        assert cluster.kube.objects(CRDS)[crd.CRD_NAME]["spec"] == crd.build_crd()["spec"]
    return "ran"


def not_here(reason: str) -> Callable[[Cluster, list[str]], str]:
    def handler(cluster: Cluster, args: list[str]) -> str:
        return f"not exercised: {reason}"

    return handler


HANDLERS: list[tuple[tuple[str, ...], Callable[[Cluster, list[str]], str]]] = [
    (("helm", "install"), helm_render),
    (("helm", "upgrade"), helm_render),
    (("helm", "uninstall"), not_here("Helm keeps its releases in a cluster; there is none here")),
    (("kubectl", "create", "secret"), create_secret),
    (("kubectl", "create", "namespace"), create_namespace),
    (("kubectl",), kubectl),
]


def test_every_readme_cluster_command_runs(cluster: Cluster) -> None:
    commands = readme_commands()
    assert len(commands) >= 12 and ["kubectl", "get", "olmo", "-w"] in commands
    outcomes = []
    for args in commands:
        handler = next(h for prefix, h in HANDLERS if tuple(args[: len(prefix)]) == prefix)
        outcomes.append((shlex.join(args), handler(cluster, args)))
    skipped = [c for c, outcome in outcomes if outcome.startswith("not exercised")]
    assert skipped == ["helm uninstall olmorun -n olmorun-system"], outcomes
    readme = (ROOT / "README.md").read_text()
    assert "Not exercised:" in readme and "`helm uninstall`" in readme  # the README says which are not
