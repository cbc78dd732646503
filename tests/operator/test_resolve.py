"""resolve_config and the storage layout: OlmoRun + phase + seed -> the TrainConfig a job runs, and where."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from olmo_operator import layout
from olmo_operator.api import OlmoRun, parse_olmorun
from olmo_operator.resolve import resolve_config
from olmo_trainer.config import ModelConfig, OptimConfig, TrainConfig

EXAMPLE = Path(__file__).parents[2] / "examples" / "olmorun-tiny.yaml"


def tiny(**storage: Any) -> OlmoRun:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"]["namespace"] = "lab"
    document["spec"]["storage"] = {"uri": "s3://bucket/runs/", **storage}
    document["spec"]["tracking"] = {"wandb": {"project": "olmo2", "entity": "ai2"}}
    return parse_olmorun(document)


def test_pretrain_config_takes_the_phase_and_the_run_defaults() -> None:
    run = tiny()
    phase = run.phase("pretrain")
    config = resolve_config(run, phase, run.spec.seed)
    assert (config.run, config.phase, config.kind, config.seed) == (
        "olmo2-tiny",
        "pretrain",
        "pretrain",
        6198,
    )
    assert config.model == ModelConfig.preset("tiny")
    assert config.data is not None and config.data.seed == 6198  # data-order seed = the job's seed
    assert phase.data is not None and config.data.sources == phase.data.sources
    assert config.optim.lr == 3.0e-3 and config.optim.betas == OptimConfig().betas  # defaults merged
    assert config.max_tokens == 400_000 and config.max_steps is None
    assert config.checkpoint.interval_steps == 50
    assert config.parallel.strategy == "fsdp" and config.parallel.precision == "fp32"
    assert config.tracking.project == "olmo2" and config.tracking.entity == "ai2"
    assert config.save_dir == "s3://bucket/runs/lab/olmo2-tiny/phases/pretrain"
    assert config.init_from is None and config.soup_from == []
    # What the job reads back is exactly this config.
    assert TrainConfig.model_validate_json(config.to_json()) == config


def test_anneal_seed_starts_from_the_parent_archive_with_its_own_data_order() -> None:
    run = tiny()
    phase = run.phase("anneal")
    parent = "s3://bucket/runs/lab/olmo2-tiny/archive/pretrain/step100"
    a = resolve_config(run, phase, 42, init_from=parent)
    b = resolve_config(run, phase, 42069, init_from=parent)
    assert a.init_from == b.init_from == parent
    assert a.data is not None and b.data is not None
    assert (a.data.seed, b.data.seed) == (42, 42069)
    assert a.optim.lr == "inherit"
    assert a.save_dir.endswith("/phases/anneal/s42") and b.save_dir.endswith("/phases/anneal/s42069")
    assert a.config_hash() != b.config_hash()


def test_pinned_data_seed_is_kept() -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["spec"]["phases"][0]["data"]["seed"] = 7
    run = parse_olmorun(document)
    data = resolve_config(run, run.phase("pretrain"), 6198).data
    assert data is not None and data.seed == 7


def test_soup_lists_the_seed_checkpoints_and_trains_nothing() -> None:
    run = tiny()
    ingredients = ["s3://b/archive/anneal-s42/step9", "s3://b/archive/anneal-s42069/step9"]
    config = resolve_config(run, run.phase("soup"), run.spec.seed, soup_from=ingredients)
    assert config.kind == "soup" and config.soup_from == ingredients
    assert config.data is None and config.batch is None and config.init_from is None


def test_bf16_is_kept_on_gpus_and_turned_to_fp32_on_cpu() -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["spec"]["phases"][0]["parallel"] = {"precision": "bf16"}
    cpu = parse_olmorun(document)
    assert resolve_config(cpu, cpu.phase("pretrain"), 1).parallel.precision == "fp32"
    document["spec"]["cluster"] = {"gpusPerNode": 8}
    document["spec"]["phases"] = document["spec"]["phases"][:1]
    document["spec"]["phases"][0]["batch"] = {"globalBatchSize": 16, "microBatchSize": 2}
    gpu = parse_olmorun(document)
    assert resolve_config(gpu, gpu.phase("pretrain"), 1).parallel.precision == "bf16"


def test_layout_paths() -> None:
    run = tiny(scratchUri="file:///scratch/")
    pretrain, anneal = run.phase("pretrain"), run.phase("anneal")
    assert layout.run_root(run) == "s3://bucket/runs/lab/olmo2-tiny"
    assert layout.run_record_uri(run) == "s3://bucket/runs/lab/olmo2-tiny/run.json"
    assert (
        layout.config_uri(run, pretrain, 6198)
        == "s3://bucket/runs/lab/olmo2-tiny/phases/pretrain/config.json"
    )
    assert (
        layout.config_uri(run, anneal, 42) == "s3://bucket/runs/lab/olmo2-tiny/phases/anneal/s42/config.json"
    )
    # Jobs write to scratch; archives always land under the run's storage.
    assert layout.save_dir(run, anneal, 42) == "file:///scratch/lab/olmo2-tiny/phases/anneal/s42"
    assert resolve_config(run, anneal, 42).save_dir == layout.save_dir(run, anneal, 42)
    assert (
        layout.archive_uri(run, anneal, 42, 7) == "s3://bucket/runs/lab/olmo2-tiny/archive/anneal-s42/step7"
    )
    assert (
        layout.archive_uri(run, pretrain, 6198, 7) == "s3://bucket/runs/lab/olmo2-tiny/archive/pretrain/step7"
    )
    assert layout.checkpoints_dir("s3://x/p") == "s3://x/p/checkpoints"
    assert layout.metrics_uri("s3://x/p") == "s3://x/p/metrics.jsonl"
    assert layout.step_of("s3://x/p/checkpoints/step120") == 120
    assert layout.step_of("s3://x/p/checkpoints/latest") is None
    assert layout.job_seeds(run, anneal) == [42, 42069] and layout.job_seeds(run, pretrain) == [6198]


def owned(namespace: str, uid: str | None) -> OlmoRun:
    run = tiny()
    meta = run.metadata.model_copy(update={"namespace": namespace, "uid": uid})
    return run.model_copy(update={"metadata": meta})


def test_wandb_run_id_is_one_per_job_of_one_olmorun() -> None:
    """Same spec, same name: two namespaces or a re-created run (new uid) are different wandb runs;
    the attempts of one job are one (resume="allow" continues it); phases and seeds differ."""
    from olmo_trainer.tracking import wandb_run_id

    def job_id(run: OlmoRun, phase: str = "pretrain", seed: int = 6198) -> str:
        return wandb_run_id(resolve_config(run, run.phase(phase), seed))

    lab, prod = owned("lab", "uid-1"), owned("prod", "uid-1")
    # The same spec in another namespace with the same storage root still writes under its own save dir;
    # the id must differ even where storage does not separate them: compare with save dirs forced equal.
    assert job_id(lab) != job_id(prod)
    same_dir = resolve_config(prod, prod.phase("pretrain"), 6198).model_copy(
        update={"save_dir": resolve_config(lab, lab.phase("pretrain"), 6198).save_dir}
    )
    assert wandb_run_id(same_dir) != job_id(lab)
    assert job_id(owned("lab", "uid-2")) != job_id(lab)  # deleted and created again
    assert job_id(owned("lab", "uid-1")) == job_id(lab)  # the next attempt of the same job
    assert len({job_id(lab), job_id(lab, "anneal", 42), job_id(lab, "anneal", 42069)}) == 3
    assert job_id(lab).startswith("olmo2-tiny-") and len(job_id(lab)) <= 64  # wandb's id limit
    # What is trained is the same everywhere: the config hash ignores whose run it is.
    configs = [resolve_config(r, r.phase("pretrain"), 6198) for r in (lab, prod, owned("lab", "uid-2"))]
    assert len({c.config_hash() for c in configs}) == 1
    assert configs[0].tracking.namespace == "lab" and configs[0].tracking.run_uid == "uid-1"
