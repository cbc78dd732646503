"""Names and paths of one OlmoRun (olmo_operator.layout): exact strings, and the job-name limit of 49."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from olmo_operator import layout
from olmo_operator.api import OlmoRun, parse_olmorun

DATA = {"sequenceLength": 64, "sources": [{"name": "g", "synthetic": {"numTokens": "1M"}}]}
BATCH = {"globalBatchSize": 2, "microBatchSize": 1}


def make_run(
    name: str = "r", storage: dict[str, Any] | None = None, seeds: list[int] | None = None
) -> OlmoRun:
    anneal: dict[str, Any] = {
        "name": "anneal",
        "kind": "anneal",
        "from": "pretrain",
        "maxSteps": 2,
        "data": DATA,
        "batch": BATCH,
    }
    if seeds:
        anneal["seeds"] = seeds
    return parse_olmorun(
        {
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {
                "image": "img",
                "model": {"preset": "tiny"},
                "storage": storage or {"uri": "s3://b/root/"},
                "cluster": {"gpusPerNode": 0, "procsPerNode": 1},
                "seed": 5,
                "phases": [
                    {"name": "pretrain", "kind": "pretrain", "maxSteps": 2, "data": DATA, "batch": BATCH},
                    anneal,
                ],
            },
        }
    )


def test_the_job_name_limit_is_49_so_pod_hostnames_fit_in_63() -> None:
    assert layout.MAX_NAME == 63
    assert layout.POD_SUFFIX == "-trainer-999-0"
    assert layout.MAX_JOB_NAME == 49 == layout.MAX_NAME - len(layout.POD_SUFFIX)


@pytest.mark.parametrize(
    ("seeds", "seed", "key"), [(None, 5, "anneal"), ([42, 7], 42, "anneal-s42"), ([42, 7], 7, "anneal-s7")]
)
def test_job_keys_carry_the_seed_only_when_a_phase_fans_out(
    seeds: list[int] | None, seed: int, key: str
) -> None:
    run = make_run(seeds=seeds)
    phase = run.phase("anneal")
    assert layout.fans_out(phase) is bool(seeds)
    assert layout.job_seeds(run, phase) == (seeds or [5])
    assert layout.job_key(phase, seed) == key
    assert layout.job_name(run, phase, seed, 3) == f"r-{key}-a3"


def test_names_up_to_49_characters_are_kept_whole() -> None:
    run = make_run(name="x" * 38)  # "<38>-pretrain-a1" = 38 + 12 = 50 > 49; 37 -> 49
    phase = run.phase("pretrain")
    exact = make_run(name="x" * 37)
    assert layout.job_name(exact, exact.phase("pretrain"), 5, 1) == "x" * 37 + "-pretrain-a1"
    assert len(layout.job_name(exact, exact.phase("pretrain"), 5, 1)) == 49
    full = "x" * 38 + "-pretrain-a1"
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    tail = f"-{digest}-a1"
    assert layout.job_name(run, phase, 5, 1) == full[: 49 - len(tail)] + tail
    assert len(layout.job_name(run, phase, 5, 1)) == 49


def test_long_names_are_hashed_distinct_and_keep_the_attempt() -> None:
    run = make_run(name="y" * 60, seeds=[42, 43])
    phase = run.phase("anneal")
    names = {layout.job_name(run, phase, seed, attempt) for seed in (42, 43) for attempt in (1, 9, 12)}
    assert len(names) == 6
    for name in names:
        assert len(name) <= layout.MAX_JOB_NAME
        assert name.startswith("y" * 20)
    assert layout.job_name(run, phase, 42, 12).endswith("-a12")
    full = "y" * 60 + "-anneal-s42-a12"
    tail = f"-{hashlib.sha256(full.encode()).hexdigest()[:8]}-a12"
    assert layout.job_name(run, phase, 42, 12) == "y" * (49 - len(tail)) + tail


def test_a_head_never_ends_in_a_dash() -> None:
    # "<36 z>-<20 z>-pretrain-a1": the 37-character head would end in "-", which no DNS label may.
    run = make_run(name="z" * 36 + "-" + "z" * 20)
    full = "z" * 36 + "-" + "z" * 20 + "-pretrain-a1"
    tail = f"-{hashlib.sha256(full.encode()).hexdigest()[:8]}-a1"
    assert len(full[: 49 - len(tail)]) == 37 and full[36] == "-"
    assert layout.job_name(run, run.phase("pretrain"), 5, 1) == "z" * 36 + tail


def test_paths_of_a_run() -> None:
    run = make_run(seeds=[42, 7])
    pretrain, anneal = run.phase("pretrain"), run.phase("anneal")
    assert layout.run_root(run) == "s3://b/root/ns/r"
    assert layout.scratch_root(run) == "s3://b/root/ns/r"
    assert layout.run_record_uri(run) == "s3://b/root/ns/r/run.json"
    assert layout.config_uri(run, pretrain, 5) == "s3://b/root/ns/r/phases/pretrain/config.json"
    assert layout.config_uri(run, anneal, 42) == "s3://b/root/ns/r/phases/anneal/s42/config.json"
    assert layout.save_dir(run, pretrain, 5) == "s3://b/root/ns/r/phases/pretrain"
    assert layout.save_dir(run, anneal, 7) == "s3://b/root/ns/r/phases/anneal/s7"
    assert layout.archive_uri(run, pretrain, 5, 10) == "s3://b/root/ns/r/archive/pretrain/step10"
    assert layout.archive_uri(run, anneal, 42, 0) == "s3://b/root/ns/r/archive/anneal-s42/step0"
    assert layout.checkpoints_dir("s3://x/p/") == "s3://x/p/checkpoints"
    assert layout.metrics_uri("/d") == "/d/metrics.jsonl"


def test_scratch_storage_holds_the_save_dirs_and_uri_the_rest() -> None:
    run = make_run(storage={"uri": "s3://b/root", "scratchUri": "/mnt/fast/"})
    pretrain = run.phase("pretrain")
    assert layout.scratch_root(run) == "/mnt/fast/ns/r"
    assert layout.save_dir(run, pretrain, 5) == "/mnt/fast/ns/r/phases/pretrain"
    assert layout.config_uri(run, pretrain, 5) == "s3://b/root/ns/r/phases/pretrain/config.json"
    assert layout.archive_uri(run, pretrain, 5, 3) == "s3://b/root/ns/r/archive/pretrain/step3"


@pytest.mark.parametrize(
    ("uri", "step"),
    [
        ("s3://b/run/phases/p/checkpoints/step120", 120),
        ("s3://b/run/archive/p-s42/step7/", 7),
        ("/scratch/ckpt/step0", 0),
        ("s3://b/run/checkpoints/latest", None),
        ("s3://b/run/checkpoints/step12.tmp", None),
        ("s3://b/run/step5/MANIFEST.json", None),
        ("s3://b/mystep5", None),
    ],
)
def test_step_of_reads_only_a_final_step_component(uri: str, step: int | None) -> None:
    assert layout.step_of(uri) == step
