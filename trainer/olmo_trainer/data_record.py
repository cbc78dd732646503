"""The record kept beside token arrays (`index.json`) and its check against the model that reads them.

`olmorun data prepare|synth` write `index.json` next to the arrays they make: tokenizer, `vocab_size`,
`eos_token_id`, `dtype`, documents and tokens per file. Arrays made by another tokenizer than the
model's either crash inside the embedding (an id beyond its rows) or train on a vocabulary that
means something else (EOS is another token). `check_data` compares every source's record with the
model before anything runs:

    check = check_data(cfg.data, cfg.model, field="data", model_field="model")
    check.problems    # ["data.sources[0] ('web'): the token arrays were made with a vocabulary of 1002 ids
    ..."]
    check.warnings    # sources without a record: they still train

It is torch- and numpy-free: the trainer calls it at job start and `olmorun validate` calls it on
data it can read. Synthetic sources have a known record: the byte-level vocabulary below.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import fsspec

from olmo_trainer.config import DataConfig, DataSource, ModelConfig
from olmo_trainer.errors import DataError
from olmo_trainer.storage import filesystem, is_local

INDEX_NAME = "index.json"
"""The small JSON record `olmorun data prepare|synth` write next to the arrays."""
BYTE_EOS = 256
"""End of document in the byte-level vocabulary (ModelConfig.preset('tiny').eos_token_id)."""
BYTE_VOCAB_SIZE = 260
"""Bytes 0..255, EOS 256, PAD 257 and two spare ids (the `tiny` preset's vocab_size)."""
_GLOB = "*?["


@dataclass(frozen=True)
class DataRecord:
    """What an `index.json` says about the arrays beside it (None: not recorded)."""

    location: str
    """The index.json URI, or `synthetic` for a generated corpus."""
    vocab_size: int | None
    eos_token_id: int | None
    dtype: str | None
    tokenizer: str | None = None


SYNTHETIC_RECORD = DataRecord("synthetic", BYTE_VOCAB_SIZE, BYTE_EOS, "uint16", "bytes")


@dataclass
class DataCheck:
    """Problems refuse the run; warnings do not; `unreadable` lists paths that could not be looked at."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    """Paths that were looked at and match no file, as messages naming the field (the trainer fails on
    them when it opens the data; `olmorun validate` refuses them first)."""


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def read_record(fs: fsspec.AbstractFileSystem, directory: str) -> DataRecord | None:
    """The record of `directory` (a path in `fs`), or None when it has no index.json."""
    path = posixpath.join(directory, INDEX_NAME)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        try:
            index = json.load(f)
        except json.JSONDecodeError as error:
            raise DataError(f"{fs.unstrip_protocol(path)}: not JSON ({error.msg})") from None
        except (RecursionError, UnicodeDecodeError) as error:  # nested too deeply, or not text
            raise DataError(f"{fs.unstrip_protocol(path)}: not JSON ({type(error).__name__})") from None
    if not isinstance(index, dict):
        raise DataError(f"{fs.unstrip_protocol(path)}: not a JSON object")
    tokenizer = index.get("tokenizer")
    return DataRecord(
        location=fs.unstrip_protocol(path),
        vocab_size=_int_or_none(index.get("vocab_size")),
        eos_token_id=_int_or_none(index.get("eos_token_id")),
        dtype=index.get("dtype") if isinstance(index.get("dtype"), str) else None,
        tokenizer=str(tokenizer) if tokenizer is not None else None,
    )


def _array_dirs(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """Directories holding the arrays a data path names (a file, a directory or a glob)."""
    if any(ch in path for ch in _GLOB):
        return sorted({posixpath.dirname(str(p)) for p in fs.glob(path)})
    if fs.isdir(path):
        found = {posixpath.dirname(str(p)) for p in fs.find(path) if str(p).endswith(".npy")}
        return sorted(found) or [path.rstrip("/")]
    if fs.exists(path):
        return [posixpath.dirname(path)]
    return []


def source_records(
    source: DataSource, *, remote: bool = True
) -> tuple[list[DataRecord], list[str], list[str], list[str]]:
    """(records, directories without one, paths not readable from here, paths that match no file) of one
    source.

    remote=False looks at local paths only (reaching object storage may need credentials or a network
    this process does not have).
    """
    if source.synthetic is not None:
        return [SYNTHETIC_RECORD], [], [], []
    records: list[DataRecord] = []
    missing: list[str] = []
    unreadable: list[str] = []
    absent: list[str] = []
    for pattern in source.paths:
        if not remote and not is_local(filesystem(pattern)[0]):
            unreadable.append(pattern)
            continue
        try:
            fs, path = filesystem(pattern)
            dirs = _array_dirs(fs, path)
            if not dirs:
                absent.append(pattern)
            for directory in dirs:
                record = read_record(fs, directory)
                if record is None:
                    missing.append(fs.unstrip_protocol(directory))
                else:
                    records.append(record)
        except ValueError:
            raise  # an index.json that is not JSON: a real problem, not an unreachable store
        except Exception as error:  # each storage driver raises its own errors (credentials, network)
            unreadable.append(f"{pattern} ({type(error).__name__}: {error})")
    return records, missing, unreadable, absent


def record_problems(
    record: DataRecord, model: ModelConfig, dtype: str, *, where: str, model_field: str
) -> list[str]:
    """Each way the record contradicts the model (vocabulary, EOS) or the data config (dtype)."""
    problems: list[str] = []
    made_by = f"tokenizer {record.tokenizer}, " if record.tokenizer else ""
    seen = f"({made_by}see {record.location})"
    if record.vocab_size is not None and record.vocab_size != model.vocab_size:
        problems.append(
            f"{where}: the token arrays were made with a vocabulary of {record.vocab_size} ids {seen} "
            f"but the model's vocabSize is {model.vocab_size}: prepare the data with the model's "
            f"tokenizer, or set {model_field}.vocabSize to {record.vocab_size} "
            f"(and embeddingSize >= {record.vocab_size})"
        )
    if record.eos_token_id is not None and record.eos_token_id != model.eos_token_id:
        problems.append(
            f"{where}: the token arrays end documents with id {record.eos_token_id} {seen} but the "
            f"model's eosTokenId is {model.eos_token_id}: set {model_field}.eosTokenId to "
            f"{record.eos_token_id}, or prepare the data with --eos-token-id {model.eos_token_id}"
        )
    if record.location != SYNTHETIC_RECORD.location and record.dtype and record.dtype != dtype:
        problems.append(
            f"{where}: the arrays hold {record.dtype} tokens (see {record.location}) but the data "
            f"config says dtype {dtype}: set dtype to {record.dtype}"
        )
    return problems


def check_data(
    data: DataConfig,
    model: ModelConfig,
    *,
    field: str = "data",
    model_field: str = "model",
    remote: bool = True,
) -> DataCheck:
    """Check every source's record against `model` and `data.dtype` (see the module docstring).

    field / model_field: how messages name the data config and the model (`spec.phases[0].data`,
    `spec.model.overrides` in a spec). Raises ValueError only for an index.json that is not JSON.
    """
    check = DataCheck()
    for j, source in enumerate(data.sources):
        where = f"{field}.sources[{j}] ({source.name!r})"
        records, missing, unreadable, absent = source_records(source, remote=remote)
        for index, pattern in enumerate(source.paths):
            if pattern in absent:
                check.absent.append(
                    f"{field}.sources[{j}].paths[{index}]: {pattern!r} matches no file; give existing token "
                    "arrays (`olmorun data prepare` makes them)"
                )
        for record in records:
            check.problems += record_problems(record, model, data.dtype, where=where, model_field=model_field)
        for directory in missing:
            check.warnings.append(
                f"{where}: no {INDEX_NAME} beside the arrays in {directory}, so their vocabulary and EOS "
                f"cannot be checked against the model's (vocabSize {model.vocab_size}, eosTokenId "
                f"{model.eos_token_id}); training goes on. `olmorun data prepare` writes one."
            )
        check.unreadable += unreadable
    return check
