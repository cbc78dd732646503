"""What both launchers share: a JobRequest -> the torchx Role every node runs. torchx is how jobs are built.

    role = trainer_role(request, nnodes=4, nproc=8, rdzv_endpoint=RANK0_ENDPOINT)

Two launchers implement reconcile.JobLauncher (submit / describe / cancel), neither branching on
the other's scheduler:
- launcher_volcano.VolcanoLauncher: torchx's Kubernetes scheduler renders a Volcano Job; the
  operator's launcher in a cluster.
- launcher_local.LocalLauncher: torchx's local_cwd scheduler runs the job's processes on this host;
  the embedded runner (`olmorun local`).

Every node runs `torchrun ... python -m olmo_trainer <kind> --config <uri>` under a shell trap that
turns a SIGTERM (preemption, drain, cancel) into exit code EXIT_PREEMPTED (143). torchx substitutes
its macros (`${rank0_env}`, ...) in args and env with string.Template, so every literal `$` we pass is
doubled here, and only here.
"""

from __future__ import annotations

import math
import shlex

from torchx import specs

from olmo_operator.request import JobRequest
from olmo_trainer.layout import EXIT_PREEMPTED

ROLE = "trainer"
RDZV_PORT = 29500
"""torchrun's c10d rendezvous port on rank 0's node."""


def cpu_cores(quantity: str | None) -> float:
    """A Kubernetes CPU quantity ('96', '500m') in cores; 0 when unset (no request).

    Read with the Kubernetes client's own parser; api.py has already checked the quantity grammar.
    """
    from kubernetes.utils import parse_quantity  # here: the kubernetes client is slow to import

    return float(parse_quantity(quantity)) if quantity else 0.0


def memory_mb(quantity: str | None) -> int:
    """A Kubernetes memory quantity ('1600Gi', '512M') in MB (torchx's unit), rounded up; 0 when unset."""
    from kubernetes.utils import parse_quantity

    if not quantity:
        return 0
    return math.ceil(parse_quantity(quantity) / 10**6)


def escape(value: str) -> str:
    """A literal for torchx: its macro substitution (string.Template) turns `$$` back into `$`."""
    return value.replace("$", "$$")


def torchrun_line(request: JobRequest, *, nnodes: int, nproc: int, rdzv_endpoint: str) -> str:
    """The shell line of every node, already escaped for torchx: torchrun under a SIGTERM trap.

    torchrun reports any worker failure, and its own SIGTERM, as exit 1; the trap keeps "stopped
    from outside" (EXIT_PREEMPTED: resubmit, no failure counted) apart from "broken" (retry).
    `rdzv_endpoint` is inserted unquoted and unescaped: it may be a shell expansion of a torchx macro.
    """

    def quoted(*args: str) -> str:
        return escape(shlex.join(args))

    launcher = quoted(
        "torchrun",
        "--nnodes",
        str(nnodes),
        "--nproc_per_node",
        str(nproc),
        "--rdzv_backend",
        "c10d",
        "--rdzv_id",
        request.name,
        "--max_restarts",
        "0",
        "--tee",
        "3",
    )
    trainer = quoted(*request.command)
    return (
        f"trap 'kill -TERM $$child 2>/dev/null; wait $$child; exit {EXIT_PREEMPTED}' TERM INT; "
        f"{launcher} --rdzv_endpoint {rdzv_endpoint} {trainer} & child=$$!; wait $$child"
    )


def trainer_role(
    request: JobRequest, *, nnodes: int, nproc: int, rdzv_endpoint: str, prefix: str = ""
) -> specs.Role:
    """The torchx Role of a job: `nnodes` replicas of `bash -c <prefix><torchrun line>`.

    `prefix` is escaped shell run before the trap (the local launcher records the exit status).
    Retries are never torchx's or Volcano's: a new attempt is the operator's, with backoff,
    resuming from the newest checkpoint.
    """
    resources = request.resources
    return specs.Role(
        name=ROLE,
        image=request.image,
        entrypoint="bash",
        args=["-c", prefix + torchrun_line(request, nnodes=nnodes, nproc=nproc, rdzv_endpoint=rdzv_endpoint)],
        num_replicas=nnodes,
        resource=specs.Resource(
            cpu=cpu_cores(resources.cpu), gpu=resources.gpus, memMB=memory_mb(resources.memory)
        ),
        env={name: escape(value) for name, value in request.env.items()},
        port_map={"c10d": RDZV_PORT},
        max_retries=0,
    )
