"""JSON lines as the data readers take them: the one reader of a (possibly compressed) JSONL file.

Every line that is not blank must be a JSON object; anything else (bytes that are not UTF-8, a line
that is not JSON, nested too deeply, or not an object) raises errors.DataError naming the file and the
line, so that a job given such data fails as InvalidConfig with one clear line instead of a traceback.

    for number, row in read_jsonl("s3://bucket/sft/part-0.jsonl.gz"):   # (line number, dict)
        ...
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from olmo_trainer.errors import DataError
from olmo_trainer.storage import open_uri

__all__ = ["read_jsonl"]


def read_jsonl(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line of `path` (a path or fsspec URL; .gz, .zst, ...
    decompressed by its suffix). Raises DataError for a line that is not a JSON object, or bytes that are
    not UTF-8."""
    with open_uri(path, "rt", compression="infer", encoding="utf-8") as stream:
        number = 0
        try:
            for number, line in enumerate(stream, start=1):
                if line.strip():
                    yield number, _object(path, number, line)
        except UnicodeDecodeError as error:
            raise DataError(f"{path}:{number + 1}: not UTF-8 text ({error.reason})") from None


def _object(path: str, number: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{number}: not JSON ({error.msg})") from None
    except RecursionError:  # json recurses once per bracket: a hostile line must not crash
        raise DataError(f"{path}:{number}: not JSON (nested too deeply)") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}:{number}: a row is a JSON object")
    return row
