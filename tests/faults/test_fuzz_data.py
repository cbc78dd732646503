"""Property: every data reader, given any bytes, reads them or raises ValueError naming the file; nothing
else.

ValueError is the one error the trainer turns into a recorded InvalidConfig (failure.json, not retried):
a reader that raised anything else (IndexError, RecursionError, UnicodeDecodeError is a ValueError) would
crash a job with a traceback, retried until the backoff limit. Readers fuzzed, each from real files:
token arrays (data.arrays.open_tokens and the mixture over them), chat JSONL (read_rows, the SFT and
preference datasets, RLVR prompts), Dolma JSONL for `olmorun data prepare`, index.json records, and the
records the operator reads (the metrics record, MANIFEST.json, failure.json): those never raise at all.
The spec parser has its own properties: tests/operator/test_api_properties.py.
Budget: ~100 examples per reader (the file runs in well under 30 s); the database is off.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from olmo_trainer import manifest, metrics_log
from olmo_trainer.config import DataConfig
from olmo_trainer.data import build_dataset
from olmo_trainer.data.arrays import open_tokens
from olmo_trainer.data.chat import ByteChatTokenizer, PreferenceDataset, SFTDataset, encode_prompt, read_rows
from olmo_trainer.data.prepare import read_documents
from olmo_trainer.data.prompts import load_prompts
from olmo_trainer.data_record import read_record
from olmo_trainer.errors import DataError, StorageError
from olmo_trainer.failure import read_failure

FUZZ = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
DEEP = b"[" * 3000  # json's C scanner recurses once per bracket: a RecursionError, not a JSONDecodeError

# JSON lines that look like the real thing, one field off, mixed with plain garbage.
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "tool", ""]),
        "content": st.text(max_size=20) | st.none(),
    }
)
ROW = st.dictionaries(
    st.sampled_from(["messages", "chosen", "rejected", "ground_truth", "dataset", "text", "prompt"]),
    st.lists(MESSAGE, max_size=3)
    | st.text(max_size=10)
    | st.sampled_from(["gsm8k", "math", "ifeval", "[1]"]),
    max_size=5,
)
LINE = ROW.map(lambda row: json.dumps(row).encode()) | st.binary(max_size=40) | st.just(DEEP)
JSONL = st.lists(LINE, max_size=5).map(lambda lines: b"\n".join(lines))


@contextmanager
def _file(content: bytes, name: str) -> Iterator[Path]:
    """The bytes as a real file (hypothesis runs many examples per test: no function-scoped tmp_path)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / name
        path.write_bytes(content)
        yield path


def _reads_or_value_error(read: Callable[[], Any]) -> None:
    """The reader reads, or raises a typed error (errors.py) that says what is wrong: DataError, or
    StorageError for a token file cut short. A bare ValueError would now be a crash, retried."""
    try:
        read()
    except (DataError, StorageError) as error:
        assert str(error), "a typed error must say what is wrong"


@FUZZ
@given(st.binary(max_size=200), st.sampled_from(["uint16", "uint32"]))
def test_token_arrays(content: bytes, dtype: str) -> None:
    with _file(content, "web.npy") as path:
        _reads_or_value_error(lambda: open_tokens(str(path), dtype, cache_dir=str(path.parent / "cache")))
        data = DataConfig.model_validate(
            {"sources": [{"name": "web", "paths": [str(path)]}], "sequenceLength": 8, "dtype": dtype}
        )

        def mixture() -> None:
            dataset = build_dataset(data, seed=0, work_dir=str(path.parent / "work"))
            for i in range(len(dataset)):
                assert dataset[i].shape == (8,)

        _reads_or_value_error(mixture)


@FUZZ
@given(JSONL)
@example(DEEP)
@example(b"\xff\xfe not utf-8")
def test_chat_jsonl(content: bytes) -> None:
    tokenizer = ByteChatTokenizer()
    with _file(content, "rows.jsonl") as path:
        _reads_or_value_error(lambda: list(read_rows([str(path)])))
        _reads_or_value_error(lambda: SFTDataset([str(path)], tokenizer, max_length=64))
        _reads_or_value_error(lambda: PreferenceDataset([str(path)], tokenizer, max_length=64))
        _reads_or_value_error(
            lambda: load_prompts(
                read_rows([str(path)]), lambda messages: encode_prompt(tokenizer, messages), max_length=64
            )
        )


@FUZZ
@given(JSONL)
@example(DEEP)
def test_dolma_jsonl(content: bytes) -> None:
    with _file(content, "docs.jsonl") as path:
        _reads_or_value_error(lambda: list(read_documents(str(path))))


@FUZZ
@given(LINE | st.binary(max_size=60))
@example(DEEP)
def test_index_json_records(content: bytes) -> None:
    with _file(content, "index.json") as path:
        _reads_or_value_error(lambda: read_record(fsspec.filesystem("file"), str(path.parent)))


@FUZZ
@given(JSONL)
@example(DEEP)
def test_records_the_operator_reads_never_raise(content: bytes) -> None:
    """What a job leaves for the operator (metrics, MANIFEST, failure.json) may be torn or damaged: read
    as absent, never as an error that would stop the operator's step."""
    fs = fsspec.filesystem("file")
    with _file(content, "metrics.jsonl") as path:
        directory = str(path.parent)
        assert isinstance(metrics_log.read_records(fs, directory), list)
        assert isinstance(metrics_log.tail_text(fs, directory, 64), str)
        metrics_log.MetricsFile(directory, resume_step=3).close()  # a resume truncating it
        assert all(isinstance(row.get("step", 0), object) for row in metrics_log.read_records(fs, directory))
        (path.parent / manifest.MANIFEST_NAME).write_bytes(content)
        assert manifest.read_manifest(fs, directory) is None or isinstance(
            manifest.read_manifest(fs, directory), dict
        )
        (path.parent / "failure.json").write_bytes(content)
        assert read_failure(directory, attempt=1) is None or read_failure(directory, attempt=1) is not None


def test_the_reader_tests_see_valid_data_too() -> None:
    """The properties are not vacuous: well-formed inputs are read, not refused."""
    with _file(np.arange(64, dtype=np.uint16).tobytes(), "web.npy") as path:
        assert open_tokens(str(path), "uint16", cache_dir=str(path.parent)).shape == (64,)
    row = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    with _file(json.dumps(row).encode(), "rows.jsonl") as path:
        assert len(SFTDataset([str(path)], ByteChatTokenizer(), max_length=64)) == 1
