"""Chat data for post-training: the OLMo 2 chat template, label masks, SFT and preference datasets.

Rows are JSON lines (.jsonl or .jsonl.gz, local or any fsspec URL), in the public Tülu 3 / OLMo 2 formats:

    SFT:         {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
    preference:  {"chosen": [...messages], "rejected": [...messages]}   (optionally "prompt": a string
                 or a message list, prepended to both when they do not already start with it)
    RL/eval:     {"messages": [...], "ground_truth": "..."}              (read by evaluate.py / RL)

The OLMo 2 template (tokenizer_config.json of allenai/OLMo-2-1124-*-Instruct):

    <|endoftext|>                                   BOS (the same token as EOS, id 100257 in dolma2)
    <|system|>\\n{c}\\n   <|user|>\\n{c}\\n   <|assistant|>\\n{c}<|endoftext|>  (+ "\\n" unless last)
    generation prompt: <|assistant|>\\n

Labels: a token is trained iff it starts inside an assistant message's content or is that message's
EOS; everything else (BOS, system and user turns, the `<|assistant|>\\n` prefix, the "\\n" after EOS) is
IGNORE. The conversation is rendered as ONE string and tokenized once (so BPE merges are those of the
whole text, as with `apply_chat_template`), and labels come from character offsets.

Tokenizers: a dolma2 `tokenizer.json` (special `<|endoftext|>` 100257, `<|pad|>` 100277), or the
byte-level vocabulary of the `tiny` preset (bytes 0..255, `<|endoftext|>` 256, `<|pad|>` 257).

Datasets: `SFTDataset` and `PreferenceDataset` hold the tokenized rows in memory; rows longer than
`max_length` are truncated, rows left with no trained token are dropped and counted (`dropped`).
Both plug into `data.order.DistributedBatches` (seeded global order, rank slicing, exact resume).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from olmo_trainer.data.arrays import DataNotFoundError
from olmo_trainer.data.jsonl import read_jsonl
from olmo_trainer.data.synth import BYTE_EOS
from olmo_trainer.errors import DataError
from olmo_trainer.storage import filesystem, is_local, open_uri

IGNORE = -100
"""Label of a token that is not trained (PyTorch's cross-entropy ignore_index)."""
EOS_TEXT = "<|endoftext|>"
PAD_TEXT = "<|pad|>"
BYTE_PAD = 257
ROLES = ("system", "user", "assistant")
GENERATION_PROMPT = "<|assistant|>\n"


# ---------------------------------------------------------------------------------------------
# The template (pure)
# ---------------------------------------------------------------------------------------------


def render(
    messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """The OLMo 2 chat text of `messages` and the character spans [start, end) that are trained
    (each assistant content plus its `<|endoftext|>`). Raises ValueError on an unknown role."""
    parts = [EOS_TEXT]
    length = len(EOS_TEXT)
    trained: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES or not isinstance(content, str):
            raise DataError(
                f"message {i}: role must be one of {ROLES} with a string content, got {message!r}"
            )
        last = i == len(messages) - 1
        if role == "assistant":
            head = GENERATION_PROMPT
            body = content + EOS_TEXT
            trained.append((length + len(head), length + len(head) + len(body)))
            text = head + body + ("" if last else "\n")
        else:
            text = f"<|{role}|>\n{content}\n"
        parts.append(text)
        length += len(text)
    if add_generation_prompt:
        parts.append(GENERATION_PROMPT)
    return "".join(parts), trained


# ---------------------------------------------------------------------------------------------
# Tokenizers with character offsets
# ---------------------------------------------------------------------------------------------


class ChatTokenizer(Protocol):
    """Encodes text (special tokens in it included) into ids with each token's starting character."""

    name: str
    eos_token_id: int
    pad_token_id: int
    vocab_size: int
    """Ids it can produce: 0 .. vocab_size - 1."""

    def encode(self, text: str) -> tuple[list[int], list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ByteChatTokenizer:
    """The `tiny` preset's vocabulary: UTF-8 bytes, `<|endoftext|>` = 256, `<|pad|>` = 257."""

    name = "bytes"
    eos_token_id = BYTE_EOS
    pad_token_id = BYTE_PAD
    vocab_size = BYTE_PAD + 1
    _SPECIALS = {EOS_TEXT: BYTE_EOS, PAD_TEXT: BYTE_PAD}

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        if text.isascii() and "<|" not in text:  # the common case, one id per character (same result)
            return list(text.encode("ascii")), list(range(len(text)))
        ids: list[int] = []
        starts: list[int] = []
        i = 0
        while i < len(text):
            special = next((s for s in self._SPECIALS if text.startswith(s, i)), None)
            if special is not None:
                ids.append(self._SPECIALS[special])
                starts.append(i)
                i += len(special)
                continue
            encoded = text[i].encode("utf-8")
            ids.extend(encoded)
            starts.extend([i] * len(encoded))
            i += 1
        return ids, starts

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HFChatTokenizer:
    """A Hugging Face `tokenizer.json` (dolma2: `<|endoftext|>` 100257, `<|pad|>` 100277), offline, from a
    local path or an fsspec URL."""

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer  # lazy: a heavy native module only this class needs

        self.name = os.path.basename(os.path.dirname(path)) or path
        try:
            with open_uri(path, "rt", encoding="utf-8") as stream:  # a local path or any fsspec URL
                self._tok = Tokenizer.from_str(stream.read())
        except FileNotFoundError:
            raise DataError(f"{path}: no such tokenizer.json") from None
        except Exception as error:  # the Rust library raises a bare Exception for unreadable files
            raise DataError(f"{path}: not a usable tokenizer.json ({error})") from None
        eos, pad = self._tok.token_to_id(EOS_TEXT), self._tok.token_to_id(PAD_TEXT)
        if eos is None:
            raise DataError(f"{path}: has no {EOS_TEXT} token; the OLMo 2 chat template needs it")
        self.eos_token_id = int(eos)
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_id
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        encoding = self._tok.encode(text, add_special_tokens=False)
        return list(encoding.ids), [start for start, _ in encoding.offsets]

    def decode(self, ids: Iterable[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=True))


def check_vocabulary(tokenizer: ChatTokenizer, vocab_size: int, *, source: str | None) -> None:
    """Refuse a tokenizer whose ids reach past the model's vocabulary (`vocab_size`), before any forward
    pass: those ids would index embedding rows the model never learnt, or none at all.

    Raises ValueError naming the tokenizer (`source`, None: the byte-level one) and both sizes."""
    if tokenizer.vocab_size > vocab_size:
        which = source or "the byte-level tokenizer"
        raise DataError(
            f"{which} has {tokenizer.vocab_size} token ids but the model's vocabulary has {vocab_size} "
            "(model vocabSize): use the tokenizer the model was trained with (dolma2 for the OLMo 2 presets, "
            "none for `tiny`), or a model whose vocabulary holds this one"
        )


def load_chat_tokenizer(path: str | None) -> ChatTokenizer:
    """The tokenizer.json at `path` (local or fsspec URL), or the byte-level one when `path` is None."""
    return ByteChatTokenizer() if path is None else HFChatTokenizer(path)


def encode_chat(
    tokenizer: ChatTokenizer, messages: Sequence[dict[str, str]], *, max_length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (T,), labels int64 (T,)): labels = ids where trained, IGNORE elsewhere; truncated to
    `max_length` tokens (the start is kept)."""
    text, spans = render(messages)
    ids, starts = tokenizer.encode(text)
    labels = [IGNORE] * len(ids)
    for position, (token, start) in enumerate(zip(ids, starts, strict=True)):
        if any(lo <= start < hi for lo, hi in spans):
            labels[position] = token
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)


def encode_prompt(tokenizer: ChatTokenizer, messages: Sequence[dict[str, str]]) -> np.ndarray:
    """The ids a model continues to answer `messages`: the template plus the generation prompt."""
    text, _ = render(messages, add_generation_prompt=True)
    return np.asarray(tokenizer.encode(text)[0], dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Reading rows
# ---------------------------------------------------------------------------------------------


def expand_chat_paths(paths: Sequence[str]) -> list[str]:
    """Globs -> files, each pattern sorted (stable order); URLs keep their scheme. Raises DataNotFoundError
    for a pattern that matches no file."""
    out: list[str] = []
    for pattern in paths:
        fs, path = filesystem(pattern)
        found = sorted(fs.glob(path)) if any(c in path for c in "*?[") else [path] if fs.exists(path) else []
        if not found:
            raise DataNotFoundError(f"no chat data files match {pattern!r}: check the data's `paths`")
        out.extend(p if is_local(fs) else fs.unstrip_protocol(p) for p in found)
    return out


def read_rows(paths: Sequence[str]) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(file, line number, row) of every non-empty line of every file the paths match (data/jsonl.py:
    .gz is decompressed). Raises DataError on a line that is no JSON object."""
    for path in expand_chat_paths(paths):
        for number, row in read_jsonl(path):
            yield path, number, row


def _files_fingerprint(paths: Sequence[str]) -> list[tuple[str, int]]:
    out = []
    for path in expand_chat_paths(paths):
        fs, local = filesystem(path)
        out.append((os.path.basename(local), int(fs.size(local))))
    return out


def preference_pair(row: dict[str, Any], where: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(chosen, rejected) message lists of a preference row, with a shared `prompt` prepended."""
    if not isinstance(row.get("chosen"), list) or not isinstance(row.get("rejected"), list):
        raise DataError(f"{where}: a preference row needs `chosen` and `rejected` message lists")
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    chosen, rejected = list(row["chosen"]), list(row["rejected"])
    if isinstance(prompt, list) and prompt:
        if chosen[: len(prompt)] != prompt:
            chosen = prompt + chosen
        if rejected[: len(prompt)] != prompt:
            rejected = prompt + rejected
    return chosen, rejected


# ---------------------------------------------------------------------------------------------
# Datasets and batches
# ---------------------------------------------------------------------------------------------


@dataclass
class ChatBatch:
    """Right-padded sequences: `input_ids` (B, L) padded with PAD, `labels` (B, L) with IGNORE, and
    `index` (B,) the dataset row of each, `lengths` (B,) its unpadded length. L is the longest row of
    this micro-batch."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    lengths: torch.Tensor

    def to(self, device: torch.device) -> ChatBatch:
        return ChatBatch(
            self.input_ids.to(device), self.labels.to(device), self.index.to(device), self.lengths.to(device)
        )


@dataclass
class PreferenceBatch:
    """Chosen and rejected sequences of the same pairs (row i of each is pair `index[i]`)."""

    chosen: ChatBatch
    rejected: ChatBatch

    @property
    def index(self) -> torch.Tensor:
        return self.chosen.index


def pad_rows(rows: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int, index: Sequence[int]) -> ChatBatch:
    """Right-pad (ids, labels) rows to the longest of them."""
    length = max(len(ids) for ids, _ in rows)
    input_ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    labels = np.full((len(rows), length), IGNORE, dtype=np.int64)
    for r, (ids, lab) in enumerate(rows):
        input_ids[r, : len(ids)] = ids
        labels[r, : len(lab)] = lab
    return ChatBatch(
        torch.from_numpy(input_ids),
        torch.from_numpy(labels),
        torch.as_tensor(list(index), dtype=torch.long),
        torch.as_tensor([len(ids) for ids, _ in rows], dtype=torch.long),
    )


class _RowStore:
    """Tokenized sequences in two flat arrays with offsets (compact, picklable, O(1) access)."""

    def __init__(self, rows: list[tuple[np.ndarray, np.ndarray]]) -> None:
        lengths = np.asarray([len(ids) for ids, _ in rows], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.ids = np.concatenate([ids for ids, _ in rows]) if rows else np.zeros(0, np.int64)
        self.labels = np.concatenate([lab for _, lab in rows]) if rows else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.ids[lo:hi], self.labels[lo:hi]


class _ChatDataset:
    """Shared by SFT and preference data: the DistributedBatches dataset protocol."""

    ngram_filter = None  # the repeated n-gram filter is a pretraining rule; chat rows are kept whole
    pad_id: int
    description: dict[str, Any]
    dropped: int

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        """Identity of the rows: file names and sizes, tokenizer, max length, kind (not the full paths)."""
        blob = json.dumps(self.description, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class SFTDataset(_ChatDataset):
    """Conversations tokenized with the OLMo 2 template; `dataset[i]` is (ids, labels) int64 (T,)."""

    def __init__(self, paths: Sequence[str], tokenizer: ChatTokenizer, *, max_length: int) -> None:
        rows: list[tuple[np.ndarray, np.ndarray]] = []
        self.dropped = 0
        for path, number, row in read_rows(paths):
            messages = row.get("messages")
            if not isinstance(messages, list):
                raise DataError(f"{path}:{number}: an SFT row needs a `messages` list")
            try:
                ids, labels = encode_chat(tokenizer, messages, max_length=max_length)
            except ValueError as error:
                raise DataError(f"{path}:{number}: {error}") from None
            if (labels == IGNORE).all():  # nothing to learn (no assistant turn, or truncated away)
                self.dropped += 1
                continue
            rows.append((ids, labels))
        self.store = _RowStore(rows)
        self.pad_id = tokenizer.pad_token_id
        self.description = {
            "kind": "sft",
            "files": _files_fingerprint(paths),
            "tokenizer": tokenizer.name,
            "max_length": max_length,
        }

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.store[int(i)]

    def micro_batches(self, indices: np.ndarray, micro_batch_size: int) -> list[ChatBatch]:
        """This rank's rows of a step, cut into padded micro-batches of `micro_batch_size` rows."""
        out = []
        for lo in range(0, len(indices), micro_batch_size):
            chunk = [int(i) for i in indices[lo : lo + micro_batch_size]]
            out.append(pad_rows([self.store[i] for i in chunk], self.pad_id, chunk))
        return out


class PreferenceDataset(_ChatDataset):
    """Preference pairs; `dataset.chosen[i]` and `dataset.rejected[i]` are (ids, labels) of pair i."""

    def __init__(self, paths: Sequence[str], tokenizer: ChatTokenizer, *, max_length: int) -> None:
        chosen: list[tuple[np.ndarray, np.ndarray]] = []
        rejected: list[tuple[np.ndarray, np.ndarray]] = []
        self.dropped = 0
        for path, number, row in read_rows(paths):
            where = f"{path}:{number}"
            try:
                pair = preference_pair(row, where)
                encoded = [encode_chat(tokenizer, m, max_length=max_length) for m in pair]
            except ValueError as error:
                raise DataError(f"{where}: {error}") from None
            if any((labels == IGNORE).all() for _, labels in encoded):
                self.dropped += 1
                continue
            chosen.append(encoded[0])
            rejected.append(encoded[1])
        self.chosen, self.rejected = _RowStore(chosen), _RowStore(rejected)
        self.pad_id = tokenizer.pad_token_id
        self.description = {
            "kind": "preference",
            "files": _files_fingerprint(paths),
            "tokenizer": tokenizer.name,
            "max_length": max_length,
        }

    def __len__(self) -> int:
        return len(self.chosen)

    def pair_batch(self, indices: Sequence[int]) -> PreferenceBatch:
        return PreferenceBatch(
            pad_rows([self.chosen[i] for i in indices], self.pad_id, indices),
            pad_rows([self.rejected[i] for i in indices], self.pad_id, indices),
        )

    def micro_batches(self, indices: np.ndarray, micro_batch_size: int) -> list[PreferenceBatch]:
        return [
            self.pair_batch([int(i) for i in indices[lo : lo + micro_batch_size]])
            for lo in range(0, len(indices), micro_batch_size)
        ]
