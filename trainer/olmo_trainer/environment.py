"""`env.json`: the environment a job ran in, written by rank 0 into its save_dir at the start of the job.

Together with the operator's run.json (spec, spec hash, image, seeds), the phases' config.json files,
metrics.jsonl and the checkpoints' MANIFESTs (content identity), it is the run record that
`olmorun diff` and `olmorun report` read. One file per job:

    {"format": "olmorun.env/v1", "run", "phase", "seed", "kind", "attempt", "configHash",
     "code": {"gitCommit", "gitDirty", "image", "imageDigest"},
     "software": {"python", "torch", "cuda", "cudnn", "nccl", "packages": {name: version}},
     "hardware": {"platform", "machine", "cpuCount", "accelerator", "devices": [name, ...]},
     "distributed": {"worldSize", "localWorldSize", "numNodes", "backend"},
     "determinism": {"deterministicAlgorithms", "cudnnDeterministic", "cudnnBenchmark", "matmulTF32",
                     "cudnnTF32", "float32MatmulPrecision", "cublasWorkspaceConfig"},
     "seeds": {"job", "data"},
     "data": {"fingerprint", "numInstances", "sequenceLength", "orderSha256", "sampleSha256",
              "sources": [{"name", "files": [[basename, tokens], ...], "instances"}]},
     "initFrom", "soupFrom", "hostname", "writtenAt"}

The image comes from OLMORUN_IMAGE, which the launcher sets from `spec.image`; its digest is the
`@sha256:...` part when the image is pinned by digest (DESIGN.md: images are pinned for reproducibility).
A retried job rewrites env.json: it describes the newest attempt. Paths are recorded by file name only
(`initFrom`/`soupFrom` excepted), so two runs of one spec in two directories write equal records.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import socket
from importlib import metadata
from typing import Any

import numpy as np
import torch

from olmo_trainer.config import TrainConfig
from olmo_trainer.failure import current_attempt
from olmo_trainer.layout import ENV_NAME
from olmo_trainer.provenance import git_state
from olmo_trainer.storage import filesystem

FORMAT = "olmorun.env/v1"
IMAGE_ENV = "OLMORUN_IMAGE"
"""Set by the launcher from the OlmoRun's `spec.image` (olmo_operator.launcher)."""
SAMPLE_INSTANCES = 16
"""Instances read, evenly spaced over the mixture, for the data sample hash."""


def image_digest(image: str | None) -> str | None:
    """`sha256:...` of an image reference pinned by digest (`repo@sha256:...`), else None."""
    if image and "@" in image:
        digest = image.rsplit("@", 1)[1]
        return digest if digest.startswith("sha256:") else None
    return None


def packages() -> dict[str, str]:
    """Every installed distribution and its version, sorted by name."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[str(name).lower()] = dist.version
    return dict(sorted(found.items()))


def software() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    nccl: str | None = None
    if cuda and hasattr(torch.cuda, "nccl"):
        version = torch.cuda.nccl.version()
        nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nccl": nccl,
        "packages": packages(),
    }


def hardware() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpuCount": os.cpu_count(),
        "accelerator": "cuda" if cuda else "cpu",
        "devices": devices,
    }


def distributed() -> dict[str, Any]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    return {
        "worldSize": world,
        "localWorldSize": local,
        "numNodes": max(1, world // max(local, 1)),
        "backend": backend,
    }


def determinism() -> dict[str, Any]:
    return {
        "deterministicAlgorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnnDeterministic": torch.backends.cudnn.deterministic,
        "cudnnBenchmark": torch.backends.cudnn.benchmark,
        "matmulTF32": torch.backends.cuda.matmul.allow_tf32,
        "cudnnTF32": torch.backends.cudnn.allow_tf32,
        "float32MatmulPrecision": torch.get_float32_matmul_precision(),
        "cublasWorkspaceConfig": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def data_record(batches: Any) -> dict[str, Any] | None:
    """Fingerprints of a job's data (a DistributedBatches): sources, sizes, the order's and a sample's hash.

    orderSha256 hashes the epoch-0 global indices as little-endian uint64 (independent of the stored
    dtype); sampleSha256 hashes SAMPLE_INSTANCES instances spread evenly over the mixture.
    """
    dataset = getattr(batches, "dataset", None)
    if dataset is None or not hasattr(batches, "order"):
        return None
    order = np.asarray(batches.order(0)).astype("<u8")
    if not hasattr(dataset, "read_raw"):  # chat rows of varying length (data/chat.py): no token windows
        return {
            "fingerprint": dataset.fingerprint,
            "numInstances": len(dataset),
            "orderSha256": hashlib.sha256(order.tobytes()).hexdigest(),
            "chat": getattr(dataset, "description", None),
        }
    picks = np.linspace(0, len(dataset) - 1, num=min(SAMPLE_INSTANCES, len(dataset)), dtype=np.int64)
    sample = hashlib.sha256()
    for index in picks:
        sample.update(np.asarray(dataset.read_raw(int(index))).astype("<u4").tobytes())
    return {
        "fingerprint": dataset.fingerprint,
        "numInstances": len(dataset),
        "sequenceLength": dataset.sequence_length,
        "orderSha256": hashlib.sha256(order.tobytes()).hexdigest(),
        "sampleSha256": sample.hexdigest(),
        "sources": [
            {
                "name": source.name,
                "files": [
                    [os.path.basename(p), int(a.shape[0])]
                    for p, a in zip(source.paths, source.arrays, strict=True)
                ],
                "instances": int(count),
            }
            for source, count in zip(dataset.sources, dataset.counts, strict=True)
        ],
    }


def environment_record(cfg: TrainConfig, *, batches: Any = None) -> dict[str, Any]:
    """Everything env.json holds for one job (see the module docstring)."""
    commit, dirty = git_state()
    image = os.environ.get(IMAGE_ENV)
    data_seed = cfg.data.seed if cfg.data is not None and cfg.data.seed is not None else cfg.seed
    return {
        "format": FORMAT,
        "run": cfg.run,
        "phase": cfg.phase,
        "kind": cfg.kind,
        "seed": cfg.seed,
        "attempt": current_attempt(),
        "configHash": cfg.config_hash(),
        "code": {"gitCommit": commit, "gitDirty": dirty, "image": image, "imageDigest": image_digest(image)},
        "software": software(),
        "hardware": hardware(),
        "distributed": distributed(),
        "determinism": determinism(),
        "seeds": {"job": cfg.seed, "data": data_seed if cfg.data is not None else None},
        "data": data_record(batches),
        "initFrom": cfg.init_from,
        "soupFrom": list(cfg.soup_from),
        "hostname": socket.gethostname(),
        "writtenAt": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_env(cfg: TrainConfig, *, batches: Any = None) -> str:
    """Write `<save_dir>/env.json` (call on rank 0 only); returns its URI."""
    fs, root = filesystem(cfg.save_dir)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(
        f"{root.rstrip('/')}/{ENV_NAME}",
        json.dumps(environment_record(cfg, batches=batches), indent=2).encode(),
    )
    return f"{cfg.save_dir.rstrip('/')}/{ENV_NAME}"
