"""Small deterministic synthetic corpora for the `tiny` preset's byte-level vocabulary.

Token ids are bytes 0..255 plus EOS 256 after each document (ModelConfig.preset("tiny")). Two kinds:

- `general`: prose from a small fixed "language" (a seeded lexicon of invented words in a few word
  classes, sentence templates, per-document topics). Spelling, grammar and topic make it learnable:
  a tiny model's loss falls far below the byte unigram entropy.
- `math`: worked arithmetic ("12 + 7 = 19", "(3 + 4) * 2 = 14", short word problems), for annealing.

The language is fixed (its own constant seed); `seed` only picks the text, so corpora with different
seeds are different samples of the same distribution. Same (kind, num_tokens, seed) -> same bytes,
whether written by `olmorun data synth` or materialised for a `SyntheticSource`.

    tokens = synthesize("math", 1_000_000, seed=0)      # np.uint16 (1_000_000,)
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator

import numpy as np

from olmo_trainer.data.arrays import write_tokens
from olmo_trainer.data_record import BYTE_EOS
from olmo_trainer.errors import ConfigurationError

SYNTH_DTYPE = "uint16"
_LANGUAGE_SEED = 20250101  # fixes the invented lexicon; independent of the per-corpus seed
_CONSONANTS = "bcdfghklmnprstvz"
_VOWELS = "aeiou"


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))


def _lexicon() -> dict[str, list[str]]:
    rng = random.Random(_LANGUAGE_SEED)
    classes = {
        "noun": (48, 2, 3),
        "verb": (32, 2, 2),
        "adj": (24, 2, 3),
        "adv": (12, 3, 3),
        "name": (16, 2, 3),
    }
    lexicon: dict[str, list[str]] = {}
    for cls, (count, low, high) in classes.items():
        words: set[str] = set()
        while len(words) < count:
            words.add(_word(rng, rng.randint(low, high)))
        lexicon[cls] = sorted(words)
    lexicon["name"] = [w.capitalize() for w in lexicon["name"]]
    lexicon["verb"] = [w + "s" for w in lexicon["verb"]]  # third person: a learnable suffix
    lexicon["adv"] = [w + "ly" for w in lexicon["adv"]]
    return lexicon


_LEXICON = _lexicon()
_DETERMINERS = ["the", "a", "every", "one", "that"]
_PREPOSITIONS = ["in", "on", "near", "under", "with", "behind"]


def _sentence(rng: random.Random, topic: list[str]) -> str:
    def noun_phrase() -> str:
        noun = rng.choice(topic) if rng.random() < 0.7 else rng.choice(_LEXICON["noun"])
        if rng.random() < 0.4:
            noun = f"{rng.choice(_LEXICON['adj'])} {noun}"
        return f"{rng.choice(_DETERMINERS)} {noun}"

    subject = rng.choice(_LEXICON["name"]) if rng.random() < 0.3 else noun_phrase()
    words = [subject, rng.choice(_LEXICON["verb"]), noun_phrase()]
    if rng.random() < 0.3:
        words.insert(2, rng.choice(_LEXICON["adv"]))
    if rng.random() < 0.5:
        words += [rng.choice(_PREPOSITIONS), noun_phrase()]
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice(".....!?")


def _general_document(rng: random.Random) -> str:
    topic = rng.sample(_LEXICON["noun"], 4)  # a document keeps coming back to a few nouns
    title = " ".join(w.capitalize() for w in rng.sample(topic, 2))
    paragraphs = []
    for _ in range(rng.randint(1, 4)):
        paragraphs.append(" ".join(_sentence(rng, topic) for _ in range(rng.randint(2, 6))))
    return f"{title}\n\n" + "\n\n".join(paragraphs)


def _problem(rng: random.Random) -> str:
    kind = rng.random()
    a, b, c = rng.randint(0, 99), rng.randint(0, 99), rng.randint(1, 12)
    if kind < 0.3:
        return f"{a} + {b} = {a + b}"
    if kind < 0.5:
        a, b = max(a, b), min(a, b)
        return f"{a} - {b} = {a - b}"
    if kind < 0.7:
        return f"{a % 13} * {c} = {(a % 13) * c}"
    if kind < 0.85:
        return f"({a % 20} + {b % 20}) * {c} = {(a % 20 + b % 20) * c}"
    name, noun = rng.choice(_LEXICON["name"]), rng.choice(_LEXICON["noun"])
    return (
        f"Q: {name} has {a} {noun}s and gets {b} more. How many {noun}s does {name} have?\n"
        f"A: {a} + {b} = {a + b}. The answer is {a + b}."
    )


def _math_document(rng: random.Random) -> str:
    return "\n".join(_problem(rng) for _ in range(rng.randint(4, 16)))


_KINDS: dict[str, Callable[[random.Random], str]] = {"general": _general_document, "math": _math_document}


def documents(kind: str, seed: int) -> Iterator[str]:
    """An endless, deterministic stream of documents of one kind."""
    if kind not in _KINDS:
        raise ConfigurationError(f"unknown synthetic kind {kind!r}; choose one of {sorted(_KINDS)}")
    rng = random.Random(f"olmorun-{kind}-{seed}")
    make = _KINDS[kind]
    while True:
        yield make(rng)


def synthesize(kind: str, num_tokens: int, seed: int) -> np.ndarray:
    """Exactly `num_tokens` byte-level tokens: documents, each followed by EOS (the last one cut)."""
    out = np.empty(num_tokens, dtype=np.uint16)
    filled = 0
    stream = documents(kind, seed)
    while filled < num_tokens:
        doc = np.frombuffer(next(stream).encode("utf-8"), dtype=np.uint8)
        take = min(doc.size, num_tokens - filled)
        out[filled : filled + take] = doc[:take]
        filled += take
        if filled < num_tokens:
            out[filled] = BYTE_EOS
            filled += 1
    return out


def synthetic_filename(kind: str, num_tokens: int, seed: int) -> str:
    return f"synth-{kind}-{num_tokens}-s{seed}.npy"


def write_synthetic(out_dir: str, kind: str, num_tokens: int, seed: int) -> str:
    """Write a corpus to `out_dir` (skipped when the same file already exists); returns its path."""
    path = os.path.join(out_dir, synthetic_filename(kind, num_tokens, seed))
    if os.path.exists(path) and os.path.getsize(path) == num_tokens * np.dtype(SYNTH_DTYPE).itemsize:
        return path
    write_tokens(path, synthesize(kind, num_tokens, seed), SYNTH_DTYPE)
    return path


# ---------------------------------------------------------------------------------------------
# Chat sets for post-training: arithmetic word problems with checkable answers
# ---------------------------------------------------------------------------------------------

CHAT_FILES = {
    "sft": "tiny-sft.jsonl",
    "dpo": "tiny-dpo.jsonl",
    "rlvr": "tiny-rlvr.jsonl",
    "heldout": "tiny-heldout.jsonl",
    "mc": "tiny-mc.jsonl",
}
"""What `write_chat_sets` writes (the names examples/olmorun-tiny.yaml points at)."""
CHAT_SIZES = {"sft": 3000, "dpo": 1500, "rlvr": 2000, "heldout": 1000, "mc": 200}
_DRAW_ORDER = (
    ("heldout", 200),
    ("mc", None),
    ("rlvr", 400),
    ("dpo", None),
    ("sft", None),
    ("rlvr", None),
    ("heldout", None),
)
"""Which set claims the next questions of the one stream, up to how many rows (None: its size).
Held-out first. The sets had 400 RL and 200 held-out rows when SFT and DPO were drawn; the rows
they gained later are drawn last, so every other set stayed exactly as it was. Why they grew
(bench/RESULTS.md, bench_rlvr): RL on the 0.2M-parameter demo model memorised 400 prompts instead of
generalising, and on 200 held-out problems one stage's gain was within the noise."""
_QUESTIONS = (
    "{name} has {a} {noun}s and gets {b} more. How many {noun}s does {name} have?",
    "{name} had {a} {noun}s and found {b} more. How many {noun}s now?",
    "What is {a} plus {b}?",
    "{name} has {a} {noun}s and gives away {b}. How many {noun}s are left?",
    "{name} had {a} {noun}s and lost {b}. How many {noun}s remain?",
    "What is {a} minus {b}?",
)


def arithmetic_problem(rng: random.Random) -> tuple[str, str, int]:
    """(question, worked answer ending in 'The answer is N.', N) with small numbers (0..20)."""
    template = rng.randrange(len(_QUESTIONS))
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if template >= 3:  # subtraction: keep the answer non-negative
        a, b = max(a, b) + rng.randint(0, 9), min(a, b)
        op, answer = "-", a - b
    else:
        op, answer = "+", a + b
    question = _QUESTIONS[template].format(
        name=rng.choice(_LEXICON["name"]), noun=rng.choice(_LEXICON["noun"]), a=a, b=b
    )
    return question, f"{a} {op} {b} = {answer}. The answer is {answer}.", answer


def _wrong(rng: random.Random, answer: int) -> int:
    return max(0, answer + rng.choice([-3, -2, -1, 1, 2, 3])) if answer > 2 else answer + rng.randint(1, 3)


def chat_sets(seed: int, sizes: dict[str, int] | None = None) -> dict[str, list[dict[str, object]]]:
    """Deterministic rows for every set of CHAT_FILES. Questions are unique across all sets, so the
    held-out rows are never seen in training (the numbers themselves do recur: the task is to read
    a new question and do the sum).

    sft:     {"messages": [user, assistant]}
    dpo:     {"chosen": [user, assistant correct], "rejected": [user, assistant wrong]}
    rlvr, heldout: {"messages": [user], "ground_truth": "N", "dataset": "gsm8k"}
    mc:      {"query": "<chat prompt>", "choices": [" worked answers"...], "gold": i} (acc_norm task)
    """
    sizes = {**CHAT_SIZES, **(sizes or {})}
    rng = random.Random(f"olmorun-chat-{seed}")
    seen: set[str] = set()
    out: dict[str, list[dict[str, object]]] = {name: [] for name in CHAT_FILES}
    for name, cap in _DRAW_ORDER:
        while len(out[name]) < min(sizes[name], cap or sizes[name]):
            question, solution, answer = arithmetic_problem(rng)
            if question in seen:
                continue
            seen.add(question)
            user = {"role": "user", "content": question}
            if name == "sft":
                out[name].append({"messages": [user, {"role": "assistant", "content": solution}]})
            elif name == "dpo":
                wrong = _wrong(rng, answer)
                bad = solution.replace(f"= {answer}.", f"= {wrong}.").replace(f"is {answer}.", f"is {wrong}.")
                out[name].append(
                    {
                        "chosen": [user, {"role": "assistant", "content": solution}],
                        "rejected": [user, {"role": "assistant", "content": bad}],
                    }
                )
            elif name == "mc":
                wrongs = sorted({_wrong(rng, answer) for _ in range(6)} - {answer})[:3]
                choices = sorted([answer, *wrongs])
                query = f"<|user|>\n{question}\n<|assistant|>\nThe answer is"
                out[name].append(
                    {"query": query, "choices": [f" {c}." for c in choices], "gold": choices.index(answer)}
                )
            else:
                out[name].append({"messages": [user], "ground_truth": str(answer), "dataset": "gsm8k"})
    return out


def write_chat_sets(out_dir: str, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, str]:
    """Write every chat set as JSON lines into `out_dir`; returns {set: path}."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, rows in chat_sets(seed, sizes).items():
        path = os.path.join(out_dir, CHAT_FILES[name])
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        paths[name] = path
    return paths
