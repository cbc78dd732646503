"""Model soup: average the final weights of several annealing runs into one new committed checkpoint.

OLMo 2 anneals the same pretrained model on several data orders (seeds) and averages the results.
`average_checkpoints` verifies every ingredient against its MANIFEST, refuses ingredients whose model
configs or tensor shapes differ, and keeps memory at about two models whatever N is: one ingredient
is loaded at a time and added into a running fp32 sum. The output is a weights-only checkpoint
(DCP `model.*` shards + config.json + MANIFEST) loadable by `load_model_weights`, so a later phase's
`init_from` treats a soup like any other parent. Its MANIFEST `extra.soup` names every ingredient
by URI and by the sha256 of its MANIFEST, which pins the exact bytes that were averaged.

`main(cfg)` is `python -m olmo_trainer soup --config URI`: the soup is written to
`<save_dir>/checkpoints/step<max ingredient step>/`, marked final, so `Checkpointer.latest_intact()` on
`<save_dir>/checkpoints` finds it exactly as it finds a training phase's final checkpoint. A retried
soup job whose output is already committed with the same ingredients does nothing.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from olmo_trainer import manifest, storage
from olmo_trainer.checkpoint import (
    CheckpointError,
    config_json_of,
    load_full_state_dict,
    manifest_sha256,
    save_model_weights,
)
from olmo_trainer.config import ModelConfig, TrainConfig
from olmo_trainer.environment import write_env
from olmo_trainer.errors import ConfigurationError
from olmo_trainer.evaluate import evaluate, load_for_eval
from olmo_trainer.layout import EXIT_USAGE, checkpoints_dir, step_uri
from olmo_trainer.lease import Lease
from olmo_trainer.metrics_log import MetricsFile


class SoupError(ConfigurationError):
    """The ingredients cannot be averaged (uncommitted, corrupted, or different models)."""


def _verified_manifest(uri: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    fs, path = storage.filesystem(uri, **storage_options)
    report = manifest.verify(fs, path, uri=uri)
    if not report.ok:
        raise SoupError(f"soup ingredient {report.summary()}")
    record = manifest.read_manifest(fs, path)
    assert record is not None  # verify() just read it
    return record


def _model_of(uri: str, storage_options: dict[str, Any]) -> ModelConfig | None:
    raw = config_json_of(uri, storage_options=storage_options)
    return None if raw is None else TrainConfig.model_validate_json(raw).model


def _differences(a: ModelConfig, b: ModelConfig) -> dict[str, tuple[Any, Any]]:
    return {
        name: (getattr(a, name), getattr(b, name))
        for name in type(a).model_fields
        if getattr(a, name) != getattr(b, name)
    }


def check_same_model(uris: list[str], storage_options: dict[str, Any] | None = None) -> ModelConfig | None:
    """The common model config of the ingredients (None when none records one); SoupError if they differ."""
    options = dict(storage_options or {})
    found: tuple[str, ModelConfig] | None = None
    for uri in uris:
        model = _model_of(uri, options)
        if model is None:
            continue
        if found is not None and model != found[1]:
            raise SoupError(
                f"soup ingredients are different models: {found[0]} vs {uri} differ in "
                f"{_differences(found[1], model)}"
            )
        found = found or (uri, model)
    return None if found is None else found[1]


def _add_into(total: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], uri: str, first: str) -> None:
    if weights.keys() != total.keys():
        missing, extra = sorted(total.keys() - weights.keys()), sorted(weights.keys() - total.keys())
        raise SoupError(
            f"{uri} has different parameters than {first}: missing {missing[:5]}, extra {extra[:5]}"
        )
    for name, tensor in weights.items():
        if tensor.shape != total[name].shape:
            raise SoupError(
                f"{uri}: {name} has shape {tuple(tensor.shape)} but {first} has {tuple(total[name].shape)}"
            )
        total[name] += tensor.float()


def average_checkpoints(
    uris: list[str],
    out_uri: str,
    *,
    config_hash: str | None = None,
    train_config: TrainConfig | None = None,
    storage_options: dict[str, Any] | None = None,
    lease: Lease | None = None,
) -> str:
    """Average the model weights of committed checkpoints into a new committed checkpoint at `out_uri`.

    The soup's config.json is `train_config` when given, else the first ingredient's. Returns out_uri.
    With the job's `lease`, raises lease.Fenced instead of writing when another attempt owns the directory.
    """
    options = dict(storage_options or {})
    if not uris:
        raise SoupError("a soup needs at least one ingredient checkpoint")
    if len(set(uris)) != len(uris):
        raise SoupError(f"a soup ingredient is listed twice: {uris}")
    records = [_verified_manifest(uri, options) for uri in uris]
    model = check_same_model(uris, options)
    if train_config is not None and model is not None and model != train_config.model:
        raise SoupError(
            f"the soup's model differs from its ingredients' in {_differences(model, train_config.model)}"
        )

    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for index, uri in enumerate(uris):
        weights = load_full_state_dict(uri, storage_options=options)
        if index == 0:
            total = {name: tensor.to(torch.float32, copy=True) for name, tensor in weights.items()}
            dtypes = {name: tensor.dtype for name, tensor in weights.items()}
        else:
            _add_into(total, weights, uri, uris[0])
        del weights  # keep at most one ingredient in memory beside the sum
    averaged = {name: (tensor / len(uris)).to(dtypes[name]) for name, tensor in total.items()}
    del total

    ingredients = [
        {"uri": uri, "step": record["step"], "manifestSha256": manifest_sha256(uri, storage_options=options)}
        for uri, record in zip(uris, records, strict=True)
    ]
    config_json = (
        train_config.to_json()
        if train_config is not None
        else config_json_of(uris[0], storage_options=options)
    )
    try:
        return save_model_weights(
            out_uri,
            averaged,
            step=max(record["step"] for record in records),
            config_hash=config_hash,
            extra={"final": True, "soup": {"ingredients": ingredients}},
            config_json=config_json,
            storage_options=options,
            lease=lease,
        )
    except CheckpointError as error:
        raise SoupError(str(error)) from error


def soup_step(cfg: TrainConfig) -> int:
    """The step a soup is recorded at: the largest step among its ingredients' MANIFESTs.

    Raises SoupError when an ingredient is not a committed checkpoint.
    """
    steps = []
    for uri in cfg.soup_from:
        record = manifest.read_manifest(*storage.filesystem(uri))
        if record is None:
            raise SoupError(f"soup ingredient {uri} is not a committed checkpoint")
        steps.append(int(record["step"]))
    return max(steps)


def _already_done(out_uri: str, uris: list[str]) -> bool:
    """True when `out_uri` is a committed soup of exactly these ingredients (a retried job)."""
    record = manifest.read_manifest(*storage.filesystem(out_uri))
    if record is None:
        return False
    made_of = [item["uri"] for item in record.get("extra", {}).get("soup", {}).get("ingredients", [])]
    if made_of != uris:
        raise SoupError(
            f"{out_uri} is already committed and is not a soup of {uris}; refusing to overwrite it"
        )
    return True


def main(cfg: TrainConfig) -> int:
    """The soup phase: average `cfg.soup_from` into `<save_dir>/checkpoints/stepN` and log it."""
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # launched by torchrun with several processes: one writer is enough
    if not cfg.soup_from:
        print("olmo_trainer soup: soupFrom lists no checkpoints to average", file=sys.stderr)
        return EXIT_USAGE
    lease = Lease.for_job(cfg.save_dir)
    lease.acquire()  # Fenced when a newer attempt of this soup owns the directory
    write_env(cfg)
    step = soup_step(cfg)
    out_uri = step_uri(checkpoints_dir(cfg.save_dir), step)  # where Checkpointer.latest_intact() finds it
    if _already_done(out_uri, cfg.soup_from):
        print(f"{cfg.run}/{cfg.phase}: soup {out_uri} already committed")
        return 0
    average_checkpoints(cfg.soup_from, out_uri, config_hash=cfg.config_hash(), train_config=cfg, lease=lease)
    metrics = MetricsFile(cfg.save_dir, resume_step=None)
    metrics.append(
        {"soup": len(cfg.soup_from), "step": step, "checkpoint": out_uri, "ingredients": cfg.soup_from}
    )
    if cfg.eval is not None:  # the averaged model, evaluated like any phase's final model
        model = load_for_eval(out_uri, cfg.model)
        results = evaluate(
            model,
            cfg.eval,
            device=torch.device("cpu"),
            max_length=cfg.model.max_sequence_length,
            work_dir=storage.work_dir(cfg),
            seed=cfg.seed,
        )
        metrics.append({"step": step, **results})
        print("eval: " + "  ".join(f"{k} {v:.4f}" for k, v in results.items()))
    metrics.close()
    print(f"{cfg.run}/{cfg.phase}: averaged {len(cfg.soup_from)} checkpoints into {out_uri}")
    return 0
