"""Bad data is found when the job starts and said in the run's status, not as a traceback in a pod log.

The trainer runs for real (`python -m olmo_trainer pretrain`, a world of one): given data that does not
exist or has another dtype, it exits 2 with one line naming the file and records `failure.json`
(InvalidConfig); a token file cut short is a storage fault, retried (exit 1, no record). The operator's
step (reconcile, the scripted launcher of tests/operator/test_reconcile.py standing in for the
scheduler) reads that record: the job fails at once, not retried, with the message in its status and a
Warning event. A chat tokenizer larger than the model's vocabulary is refused before any forward pass,
the same way (a DataError the trainer records).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from olmo_operator import layout
from olmo_operator.api import parse_olmorun
from olmo_operator.reconcile import reconcile_plan
from olmo_trainer.data.arrays import write_tokens
from olmo_trainer.data.chat import ByteChatTokenizer, HFChatTokenizer, check_vocabulary
from olmo_trainer.failure import read_failure
from olmo_trainer.layout import EXIT_FAILED, EXIT_USAGE
from tests.operator.test_reconcile import EXAMPLE, T0, ScriptedLauncher
from tests.trainer.dist_util import tiny_config, trainer


def _start(tmp_path: Path, source: dict[str, Any], dtype: str = "uint16") -> tuple[Any, Path]:
    """The trainer started once on a config whose only data source is `source`: (the process, save dir)."""
    data = {"sources": [{"name": "web", **source}], "sequenceLength": 64, "dtype": dtype}
    config = tiny_config(tmp_path, data=data, saveDir=str(tmp_path / "save"))
    result = trainer(["pretrain", "--config", str(config)], env={"OLMORUN_ATTEMPT": "1"})
    return result, tmp_path / "save"


def _refused(result: Any, save: Path, words: str) -> str:
    assert result.returncode == EXIT_USAGE, result.stderr[-2000:]
    assert words in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    failure = read_failure(str(save), attempt=1)
    assert failure is not None and failure.reason == "InvalidConfig" and words in failure.message
    return failure.message


def test_data_that_does_not_exist_fails_the_job_with_a_clear_condition(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / "part-0.npy")
    result, save = _start(tmp_path, {"paths": [missing]})
    message = _refused(result, save, f"no token files match {missing!r}")

    # The operator: the job's failure.json makes it Failed at once, said in the status and an event.
    document = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"].update(namespace="lab", uid="uid-data", generation=1)
    document["spec"]["storage"] = {"uri": (tmp_path / "storage").as_uri()}
    document["spec"]["phases"] = document["spec"]["phases"][:1]
    run = parse_olmorun(document)
    launcher = ScriptedLauncher()
    run = run.model_copy(update={"status": reconcile_plan(run, launcher=launcher, now=T0).status})
    [name] = launcher.requests
    job_save = Path(layout.save_dir(run, run.phase("pretrain"), 6198).removeprefix("file://"))
    job_save.mkdir(parents=True, exist_ok=True)
    (job_save / "failure.json").write_text((save / "failure.json").read_text())  # what the pod left
    launcher.set(name, "Failed", exit_code=EXIT_USAGE)
    result_plan = reconcile_plan(run, launcher=launcher, now=T0)
    job = result_plan.status.phases["pretrain"].jobs[0]
    assert job.state == "Failed" and job.message == f"InvalidConfig: {message}; not retried"
    assert result_plan.status.stage == "Failed" and list(launcher.requests) == [name]  # no retry
    assert ("Warning", "InvalidConfig") in [(e.type, e.reason) for e in result_plan.events]


def test_a_truncated_token_file_fails_the_attempt_and_is_retried(tmp_path: Path) -> None:
    """A token file cut short (an upload still running, or killed midway) may be whole at the next attempt:
    a StorageError (errors.py), so the job exits 1 naming the file, records no failure.json (not
    InvalidConfig) and the operator retries it within the phase's backoff limit."""
    path = tmp_path / "web.npy"
    write_tokens(str(path), np.arange(1000) % 250, "uint32")
    path.write_bytes(path.read_bytes()[:-3])  # the last token cut short
    result, save = _start(tmp_path, {"paths": [str(path)]}, dtype="uint32")
    assert result.returncode == EXIT_FAILED, result.stderr[-2000:]
    assert "is not a whole number of uint32 tokens" in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr and "the job is retried" in result.stderr
    assert read_failure(str(save), attempt=1) is None


def test_an_untyped_value_error_is_a_crash_that_is_retried(tmp_path: Path) -> None:
    """Only the typed errors decide InvalidConfig. numpy raises a bare ValueError for a truncated .npy
    (here the data order cached in the work dir, cut short behind the trainer's back): before issue 20
    any ValueError became a permanent InvalidConfig; now it is a crash (exit 1, traceback, no record)."""
    work = tmp_path / "work"
    first = tiny_config(tmp_path, name="first.json", maxSteps=1, saveDir=str(tmp_path / "first"))
    assert trainer(["pretrain", "--config", str(first)], env={"OLMO_WORK_DIR": str(work)}).returncode == 0
    [cached] = (work / "global_indices").glob("*.npy")
    cached.write_bytes(cached.read_bytes()[:-8])
    second = tiny_config(tmp_path, name="second.json", maxSteps=1, saveDir=str(tmp_path / "second"))
    result = trainer(
        ["pretrain", "--config", str(second)], env={"OLMO_WORK_DIR": str(work), "OLMORUN_ATTEMPT": "1"}
    )
    assert result.returncode == EXIT_FAILED and "ValueError" in result.stderr, result.stderr[-2000:]
    assert read_failure(str(tmp_path / "second"), attempt=1) is None


def test_a_batch_that_does_not_split_over_the_ranks_stays_invalid_config(tmp_path: Path) -> None:
    """A config error is typed (errors.ConfigurationError): recorded InvalidConfig, not retried."""
    config = tiny_config(
        tmp_path, batch={"globalBatchSize": 9, "microBatchSize": 2}, saveDir=str(tmp_path / "save")
    )
    result = trainer(["pretrain", "--config", str(config)], env={"OLMORUN_ATTEMPT": "1"})
    _refused(result, tmp_path / "save", "globalBatchSize 9 is not divisible by microBatchSize x world size")


def test_a_token_file_of_another_dtype_is_named(tmp_path: Path) -> None:
    """uint16 tokens read as uint32: every pair of ids becomes one id far beyond the vocabulary."""
    path = tmp_path / "web.npy"
    write_tokens(str(path), (np.arange(4096) % 250) + 1, "uint16")
    result, save = _start(tmp_path, {"paths": [str(path)]}, dtype="uint32")
    _refused(result, save, "outside the model's vocabulary of 260 ids")


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    vocab = {"<|endoftext|>": 0, "<|pad|>": 1, **{f"w{i}": i + 2 for i in range(1000)}}
    path = tmp_path / "tokenizer.json"
    path.write_text(Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>")).to_str())
    tokenizer = HFChatTokenizer(str(path))
    with pytest.raises(
        ValueError, match=r"has 1002 token ids but the model's vocabulary has 260 \(model vocabSize\)"
    ):
        check_vocabulary(tokenizer, 260, source=str(path))
    check_vocabulary(tokenizer, 1002, source=str(path))  # a model that holds it
    with pytest.raises(ValueError, match="the byte-level tokenizer has 258 token ids"):
        check_vocabulary(ByteChatTokenizer(), 256, source=None)


def test_validate_refuses_data_paths_that_match_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """At the door, when the data is reachable from where `olmorun validate` runs (local paths; object
    storage with --remote-data): a path matching no file is named with its field."""
    from olmo_operator import cli

    document = yaml.safe_load(EXAMPLE.read_text())
    present = tmp_path / "web.npy"
    write_tokens(str(present), np.arange(100) % 250, "uint16")
    document["spec"]["phases"][0]["data"]["sources"] = [
        {"name": "web", "paths": [str(present), str(tmp_path / "nowhere-*.npy")], "weight": 1}
    ]
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump(document))
    assert cli.main(["validate", str(spec)]) == 1
    err = capsys.readouterr().err
    assert (
        f"spec.phases[0].data.sources[0].paths[1]: {str(tmp_path / 'nowhere-*.npy')!r} matches no file" in err
    )
    assert "paths[0]" not in err  # the file that exists is not named
