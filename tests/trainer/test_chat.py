"""Chat data: the OLMo 2 template, label masks computed by hand, truncation, drops, preference rows,
the dolma2 special ids through a real `tokenizers` tokenizer.json, and the deterministic synthetic sets."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from olmo_trainer.data.chat import (
    IGNORE,
    ByteChatTokenizer,
    HFChatTokenizer,
    PreferenceDataset,
    SFTDataset,
    encode_chat,
    encode_prompt,
    preference_pair,
    render,
)
from olmo_trainer.data.synth import CHAT_FILES, chat_sets, write_chat_sets

CHAT = [
    {"role": "system", "content": "s"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "ok"},
    {"role": "user", "content": "q"},
    {"role": "assistant", "content": "a"},
]


def test_render_is_the_olmo2_template() -> None:
    text, spans = render(CHAT)
    assert text == (
        "<|endoftext|><|system|>\ns\n<|user|>\nhi\n<|assistant|>\nok<|endoftext|>\n"
        "<|user|>\nq\n<|assistant|>\na<|endoftext|>"
    )
    assert [text[lo:hi] for lo, hi in spans] == ["ok<|endoftext|>", "a<|endoftext|>"]
    prompt, _ = render(CHAT[:2], add_generation_prompt=True)
    assert prompt == "<|endoftext|><|system|>\ns\n<|user|>\nhi\n<|assistant|>\n"


def test_labels_of_a_multi_turn_chat_by_hand() -> None:
    ids, labels = encode_chat(ByteChatTokenizer(), CHAT)
    # BOS, then bytes; every <|endoftext|> is one id (256).
    text = "<|system|>\ns\n<|user|>\nhi\n<|assistant|>\nok"
    expected = [256, *text.encode(), 256, *b"\n<|user|>\nq\n<|assistant|>\na", 256]
    assert ids.tolist() == expected
    trained = [(i, t) for i, t in enumerate(labels.tolist()) if t != IGNORE]
    ok_at = 1 + len(text) - 2  # the positions of "o", "k", then their EOS
    a_at = len(expected) - 2
    assert trained == [
        (ok_at, ord("o")),
        (ok_at + 1, ord("k")),
        (ok_at + 2, 256),
        (a_at, ord("a")),
        (a_at + 1, 256),
    ]
    # The "\n" after the first EOS and every "<|assistant|>\n" prefix are ignored.
    assert labels[ok_at + 3] == IGNORE and labels[ok_at - 1] == IGNORE


def test_generation_prompt_ends_with_the_assistant_tag() -> None:
    ids = encode_prompt(ByteChatTokenizer(), CHAT[:2])
    assert bytes(ids[1:].tolist()).decode().endswith("<|assistant|>\n") and ids[0] == 256


def test_unknown_role_names_the_message() -> None:
    with pytest.raises(ValueError, match="message 1: role must be one of"):
        render([{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}])


def _jsonl(path: Path, rows: list[dict[str, object]], gz: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_sft_dataset_truncates_drops_and_reads_gzip(tmp_path: Path) -> None:
    rows = [
        {"messages": CHAT},
        {"messages": [{"role": "user", "content": "no answer"}]},  # nothing to train: dropped
        {"messages": [{"role": "user", "content": "x" * 50}, {"role": "assistant", "content": "late"}]},
    ]
    path = _jsonl(tmp_path / "sft.jsonl.gz", rows, gz=True)
    dataset = SFTDataset([str(path)], ByteChatTokenizer(), max_length=45)
    # Row 3's answer starts after 45 tokens: truncated away, so dropped too.
    assert len(dataset) == 1 and dataset.dropped == 2
    ids, labels = dataset[0]
    # BOS + "<|system|>\ns\n" + "<|user|>\nhi\n" + "<|assistant|>\n" = 40 tokens, then "ok" + EOS at 40..42
    assert len(ids) == 45 and np.flatnonzero(labels != IGNORE).tolist() == [40, 41, 42]
    batch = dataset.micro_batches(np.array([0, 0]), 2)[0]
    assert batch.input_ids.shape == (2, 45) and batch.lengths.tolist() == [45, 45]


def test_micro_batches_are_right_padded_to_their_longest_row(tmp_path: Path) -> None:
    short = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    path = _jsonl(tmp_path / "sft.jsonl", [{"messages": CHAT}, {"messages": short}])
    dataset = SFTDataset([str(path)], ByteChatTokenizer(), max_length=128)
    batch = dataset.micro_batches(np.array([1, 0]), 2)[0]
    long_len, short_len = len(dataset[0][0]), len(dataset[1][0])
    assert batch.input_ids.shape == (2, long_len) and batch.index.tolist() == [1, 0]
    assert batch.input_ids[0, short_len:].eq(257).all() and batch.labels[0, short_len:].eq(IGNORE).all()


def test_preference_rows_with_a_shared_prompt(tmp_path: Path) -> None:
    user = {"role": "user", "content": "2+2?"}
    good, bad = {"role": "assistant", "content": "4"}, {"role": "assistant", "content": "5"}
    chosen, rejected = preference_pair({"prompt": "2+2?", "chosen": [good], "rejected": [bad]}, "row")
    assert chosen == [user, good] and rejected == [user, bad]
    same = preference_pair({"prompt": "2+2?", "chosen": [user, good], "rejected": [user, bad]}, "row")
    assert same == ([user, good], [user, bad])  # already there: not prepended twice
    with pytest.raises(ValueError, match="row: a preference row needs"):
        preference_pair({"chosen": [good]}, "row")
    path = _jsonl(tmp_path / "dpo.jsonl", [{"chosen": [user, good], "rejected": [user, bad]}])
    dataset = PreferenceDataset([str(path)], ByteChatTokenizer(), max_length=64)
    pair = dataset.pair_batch([0])
    assert pair.chosen.labels[pair.chosen.labels != IGNORE].tolist() == [ord("4"), 256]
    assert pair.rejected.labels[pair.rejected.labels != IGNORE].tolist() == [ord("5"), 256]


def test_dolma2_special_ids_through_a_tokenizer_json(tmp_path: Path) -> None:
    """A real `tokenizers` tokenizer.json with dolma2's special ids (a tiny word-level vocabulary)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    words = ["<|system|>", "<|user|>", "<|assistant|>", "\n", "hi", "ok", "[UNK]"]
    vocab = {w: i for i, w in enumerate(words)} | {"<|endoftext|>": 100_257, "<|pad|>": 100_277}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"<\|[a-z]+\|>|\n|\w+"), behavior="isolated")
    tok.add_special_tokens(["<|endoftext|>", "<|pad|>"])
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    hf = HFChatTokenizer(str(path))
    assert (hf.eos_token_id, hf.pad_token_id) == (100_257, 100_277)
    ids, labels = encode_chat(hf, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}])
    assert ids.tolist() == [100_257, 1, 3, 4, 3, 2, 3, 5, 100_257]
    assert labels.tolist() == [IGNORE] * 7 + [5, 100_257]


def test_synthetic_chat_sets_are_deterministic_disjoint_and_checkable(tmp_path: Path) -> None:
    small = {"sft": 60, "dpo": 30, "rlvr": 20, "heldout": 20, "mc": 10}
    first, again = chat_sets(1, small), chat_sets(1, small)
    assert first == again and chat_sets(2, small) != first
    questions = {
        name: {json.dumps(r.get("messages", r.get("chosen", r.get("query"))))[:200] for r in rows}
        for name, rows in first.items()
    }
    assert not questions["heldout"] & questions["sft"]
    for row in first["heldout"]:
        assert set(row) == {"messages", "ground_truth", "dataset"} and row["ground_truth"].isdigit()
    for row in first["dpo"]:
        assert row["chosen"][0] == row["rejected"][0] and row["chosen"][1] != row["rejected"][1]
    for row in first["mc"]:
        assert 0 <= row["gold"] < len(row["choices"])
    paths = write_chat_sets(str(tmp_path), 1, small)
    assert {Path(p).name for p in paths.values()} == set(CHAT_FILES.values())
    assert len((tmp_path / CHAT_FILES["sft"]).read_text().splitlines()) == 60


def test_examples_data_is_what_synth_writes(tmp_path: Path) -> None:
    """The committed examples/data files are exactly `olmorun data synth chat examples/data`'s output."""
    root = Path(__file__).parents[2] / "examples" / "data"
    write_chat_sets(str(tmp_path))
    for name in CHAT_FILES.values():
        assert (root / name).read_bytes() == (tmp_path / name).read_bytes(), name
