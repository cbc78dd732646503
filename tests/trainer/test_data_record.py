"""Token data and model must agree: index.json records checked at job start and by `olmorun validate`.

The data of these tests comes from the real `olmorun data prepare` with a word-level tokenizer.json of
1,002 ids (EOS = 1001); the model is the `tiny` preset (vocabSize 260, EOS 256).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest

from olmo_operator import cli
from olmo_trainer.config import DataConfig, ModelConfig
from olmo_trainer.data import DistributedBatches, build_dataset
from olmo_trainer.data.arrays import write_tokens
from olmo_trainer.data.order import TokenIdOutOfRange
from olmo_trainer.data_record import INDEX_NAME, check_data
from tests.trainer.dist_util import REPO, tiny_config, trainer

TINY = ModelConfig.preset("tiny")
BIG_VOCAB, BIG_EOS = 1002, 1001


def big_tokenizer(path: Path) -> Path:
    """A word-level tokenizer.json: `w0`..`w999`, [UNK] = 1000, <|endoftext|> = 1001."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(1000)} | {"[UNK]": 1000, "<|endoftext|>": BIG_EOS}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def prepared(tmp_path: Path, *, tokenizer: bool = True, name: str = "data") -> Path:
    """`olmorun data prepare` output: 40 documents of 30 words each (ids up to 999 with the tokenizer)."""
    rng = np.random.default_rng(0)
    docs = tmp_path / f"{name}.jsonl"
    lines = [json.dumps({"text": " ".join(f"w{i}" for i in rng.integers(0, 1000, 30))}) for _ in range(40)]
    docs.write_text("\n".join(lines) + "\n")
    args = ["data", "prepare", str(docs), "--out", str(tmp_path / name), "--dtype", "uint16"]
    if tokenizer:
        args += ["--tokenizer", str(big_tokenizer(tmp_path / "tokenizer.json"))]
    assert cli.main(args) == 0
    return tmp_path / name


def data_config(*paths: str, dtype: str = "uint16") -> DataConfig:
    return DataConfig.model_validate(
        {"sources": [{"name": "web", "paths": list(paths)}], "sequenceLength": 16, "dtype": dtype}
    )


@pytest.mark.parametrize("form", ["directory", "glob", "file"])
def test_data_from_a_larger_vocabulary_is_refused_with_both_values(tmp_path: Path, form: str) -> None:
    out = prepared(tmp_path)
    path = {"directory": str(out), "glob": str(out / "*.npy"), "file": str(next(out.glob("*.npy")))}[form]
    check = check_data(data_config(path), TINY)
    assert len(check.problems) == 2 and check.warnings == []
    vocab, eos = check.problems
    assert "data.sources[0] ('web')" in vocab
    assert f"vocabulary of {BIG_VOCAB} ids" in vocab and "vocabSize is 260" in vocab
    assert f"model.vocabSize to {BIG_VOCAB}" in vocab
    assert f"end documents with id {BIG_EOS}" in eos and "eosTokenId is 256" in eos


def test_matching_data_passes_and_data_without_a_record_warns(tmp_path: Path) -> None:
    matching = prepared(tmp_path, tokenizer=False)  # bytes: the tiny preset's vocabulary
    assert check_data(data_config(str(matching)), TINY).problems == []
    bare = tmp_path / "bare"
    write_tokens(str(bare / "part-0.npy"), np.arange(200) % 250, "uint16")
    check = check_data(data_config(str(bare / "*.npy")), TINY)
    assert check.problems == []
    assert (
        len(check.warnings) == 1
        and f"no {INDEX_NAME}" in check.warnings[0]
        and "training goes on" in check.warnings[0]
    )


def test_a_dtype_that_contradicts_the_record_is_refused(tmp_path: Path) -> None:
    out = prepared(tmp_path, tokenizer=False)  # uint16
    (problem,) = check_data(data_config(str(out), dtype="uint32"), TINY).problems
    assert "hold uint16 tokens" in problem and "dtype uint32" in problem


def test_remote_records_are_read_unless_told_to_stay_local(tmp_path: Path) -> None:
    out = prepared(tmp_path)
    fs = fsspec.filesystem("memory")
    for item in out.iterdir():
        fs.put_file(str(item), f"/records/{item.name}")
    remote = data_config("memory://records/*.npy")
    assert len(check_data(remote, TINY).problems) == 2
    skipped = check_data(remote, TINY, remote=False)
    assert skipped.problems == [] and skipped.unreadable == ["memory://records/*.npy"]


def test_synthetic_sources_carry_the_byte_vocabulary() -> None:
    synthetic = DataConfig.model_validate({"sources": [{"name": "s", "synthetic": {"numTokens": "1K"}}]})
    assert check_data(synthetic, TINY).problems == []
    (vocab,) = check_data(synthetic, ModelConfig.preset("tiny", vocab_size=300, embedding_size=384)).problems
    assert "vocabulary of 260 ids" in vocab and "vocabSize is 300" in vocab


def test_a_token_id_beyond_the_vocabulary_is_a_clear_error_not_an_index_error(tmp_path: Path) -> None:
    out = prepared(tmp_path)
    (out / INDEX_NAME).unlink()  # no record: only the ids themselves can tell
    dataset = build_dataset(data_config(str(out)), seed=0, work_dir=str(tmp_path / "w"))
    batches = DistributedBatches(
        dataset,
        global_batch_size=4,
        micro_batch_size=2,
        rank=0,
        world_size=1,
        seed=0,
        work_dir=str(tmp_path / "w"),
        vocab_size=TINY.vocab_size,
    )
    with pytest.raises(TokenIdOutOfRange, match=r"outside the model's vocabulary of 260 ids") as caught:
        next(iter(batches))
    assert "source 'web'" in str(caught.value) and not isinstance(caught.value, IndexError)
    within = DistributedBatches(
        dataset,
        global_batch_size=4,
        micro_batch_size=2,
        rank=0,
        world_size=1,
        seed=0,
        work_dir=str(tmp_path / "w"),
        vocab_size=BIG_VOCAB,
    )
    assert int(max(b.max() for b in next(iter(within)))) < BIG_VOCAB


@pytest.mark.parametrize("record", [True, False])
def test_the_job_refuses_mismatched_data_before_training(tmp_path: Path, record: bool) -> None:
    """With a record the job stops at start naming both vocabularies; without one it warns, then stops
    at the first out-of-range id. Either way: exit 2 with a message, no IndexError, no traceback."""
    out = prepared(tmp_path)
    if not record:
        (out / INDEX_NAME).unlink()
    data = {"sources": [{"name": "web", "paths": [str(out)]}], "sequenceLength": 16, "dtype": "uint16"}
    config = tiny_config(tmp_path, data=data, parallel={"strategy": "ddp"}, maxSteps=2)
    result = trainer(["pretrain", "--config", str(config)])
    assert result.returncode == 2, result.stderr[-3000:]
    assert "IndexError" not in result.stderr and "Traceback" not in result.stderr
    if record:
        assert f"vocabulary of {BIG_VOCAB} ids" in result.stderr and "vocabSize is 260" in result.stderr
    else:
        assert f"no {INDEX_NAME}" in result.stderr
        assert "outside the model's vocabulary of 260 ids" in result.stderr
    assert not (tmp_path / "out" / "checkpoints").exists() or not any(
        (tmp_path / "out" / "checkpoints").iterdir()
    )


SPEC = """apiVersion: olmorun.dev/v1alpha1
kind: OlmoRun
metadata: {{name: mismatch}}
spec:
  image: x
  model: {{preset: tiny}}
  storage: {{uri: 'file:///tmp/x'}}
  cluster: {{gpusPerNode: 0, procsPerNode: 1}}
  phases:
    - name: pretrain
      kind: pretrain
      maxSteps: 2
      data: {{sequenceLength: 16, dtype: uint16, sources: [{{name: web, paths: ['{path}']}}]}}
      batch: {{globalBatchSize: 4, microBatchSize: 2}}
"""


def validate(spec: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "olmo_operator.cli", "validate", str(spec)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60)


def test_validate_refuses_mismatched_local_data_and_names_the_fields(tmp_path: Path) -> None:
    spec = tmp_path / "run.yaml"
    spec.write_text(SPEC.format(path=prepared(tmp_path)))
    result = validate(spec)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "spec.phases[0].data.sources[0] ('web')" in result.stderr
    assert (
        f"spec.model.overrides.vocabSize to {BIG_VOCAB}" in result.stderr
        and "vocabSize is 260" in result.stderr
    )
    assert f"spec.model.overrides.eosTokenId to {BIG_EOS}" in result.stderr


def test_validate_accepts_matching_data_and_warns_without_a_record(tmp_path: Path) -> None:
    spec = tmp_path / "run.yaml"
    spec.write_text(SPEC.format(path=prepared(tmp_path, tokenizer=False)))
    matching = validate(spec)
    assert matching.returncode == 0 and "valid" in matching.stdout and matching.stderr == ""
    (tmp_path / "data" / INDEX_NAME).unlink()
    bare = validate(spec)
    assert bare.returncode == 0 and "valid" in bare.stdout
    assert f"warning: spec.phases[0].data.sources[0] ('web'): no {INDEX_NAME}" in bare.stderr
