"""Dolma-style JSONL documents -> token arrays: the work of `olmorun data prepare`.

Each input (`.jsonl` or `.jsonl.gz`, local or fsspec URL) holds one JSON object per line with a
`text` field (`{"id": ..., "text": ...}`). Every document is tokenized, followed by EOS, and appended
to one headerless array per input (`OUT/00000-<stem>.npy`, ...). `OUT/index.json` records what was
written: documents and tokens per file, tokenizer, vocabulary size, EOS id and dtype.

    index = prepare(["docs.jsonl.gz"], "out/", tokenizer_path=None)   # byte-level, uint16
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from olmo_trainer.data.arrays import smallest_dtype
from olmo_trainer.data.jsonl import read_jsonl
from olmo_trainer.data.tokenizer import Tokenizer, load_tokenizer
from olmo_trainer.data_record import INDEX_NAME
from olmo_trainer.errors import DataError
from olmo_trainer.storage import replacing

INDEX_FORMAT = "olmorun.tokens/v1"
_BATCH_DOCS = 512  # documents per tokenizer call: amortises the call overhead, bounds memory


def read_documents(url: str) -> Iterator[str]:
    """The `text` of each JSON line of a (possibly gzipped) JSONL file."""
    for number, doc in read_jsonl(url):
        if not isinstance(doc.get("text"), str):
            raise DataError(f'{url}:{number}: a document needs a string "text" field')
        yield doc["text"]


def _batches(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _output_name(index: int, url: str) -> str:
    stem = re.sub(r"\.(jsonl|json)(\.gz|\.zst|\.bz2|\.xz)?$", "", os.path.basename(url.rstrip("/")))
    return f"{index:05d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', stem) or 'input'}.npy"


def tokenize_file(url: str, path: str, tokenizer: Tokenizer, dtype: str) -> tuple[int, int]:
    """Stream one JSONL file into a token array at `path`; returns (documents, tokens)."""
    docs = tokens = 0
    eos = np.asarray([tokenizer.eos_token_id])
    with replacing(path) as partial, open(partial, "wb") as out:
        for batch in _batches(read_documents(url), _BATCH_DOCS):
            encoded = tokenizer.encode_batch(batch)
            flat = np.concatenate([part for ids in encoded for part in (ids, eos)])
            out.write(flat.astype(dtype).tobytes())
            docs += len(batch)
            tokens += int(flat.size)
    return docs, tokens


def prepare(
    inputs: list[str],
    out_dir: str,
    *,
    tokenizer_path: str | None = None,
    dtype: str | None = None,
    eos_token_id: int | None = None,
) -> dict[str, Any]:
    """Tokenize every input into `out_dir` and write `index.json`; returns the index."""
    if not inputs:
        raise DataError("no input files")
    tokenizer = load_tokenizer(tokenizer_path, eos_token_id)
    dtype = dtype or smallest_dtype(tokenizer.vocab_size)
    if tokenizer.vocab_size - 1 > np.iinfo(np.dtype(dtype)).max:
        raise DataError(f"a vocabulary of {tokenizer.vocab_size} does not fit {dtype}; use uint32")
    os.makedirs(out_dir, exist_ok=True)
    files: list[dict[str, Any]] = []
    for index, url in enumerate(inputs):
        name = _output_name(index, url)
        docs, tokens = tokenize_file(url, os.path.join(out_dir, name), tokenizer, dtype)
        files.append({"path": name, "source": url, "docs": docs, "tokens": tokens})
    result = {
        "format": INDEX_FORMAT,
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "eos_token_id": tokenizer.eos_token_id,
        "dtype": dtype,
        "docs": sum(f["docs"] for f in files),
        "tokens": sum(f["tokens"] for f in files),
        "files": files,
    }
    write_index(out_dir, result)
    return result


def write_index(out_dir: str, index: dict[str, Any]) -> None:
    with open(os.path.join(out_dir, INDEX_NAME), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
