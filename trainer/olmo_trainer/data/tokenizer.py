"""Tokenizers for `olmorun data prepare`: a local Hugging Face `tokenizer.json`, or plain bytes.

The byte-level tokenizer maps UTF-8 bytes to ids 0..255 and uses 256 as EOS: the `tiny` preset's
vocabulary (ModelConfig.preset("tiny"), 260 ids with the specials). A `tokenizer.json` is loaded with
the `tokenizers` library, offline; its EOS is given or found among the usual end-of-text tokens.

    tok = load_tokenizer("dolma2/tokenizer.json")      # or load_tokenizer(None) for bytes
    ids = tok.encode_batch(["first doc", "second doc"])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from olmo_trainer.data_record import BYTE_EOS, BYTE_VOCAB_SIZE
from olmo_trainer.errors import DataError

_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>")


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eos_token_id: int

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]: ...


@dataclass
class ByteTokenizer:
    """UTF-8 bytes as ids, EOS 256."""

    name: str = "bytes"
    vocab_size: int = BYTE_VOCAB_SIZE
    eos_token_id: int = BYTE_EOS

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]


class HFTokenizer:
    """A `tokenizers` tokenizer from a local tokenizer.json."""

    def __init__(self, path: str, eos_token_id: int | None = None) -> None:
        from tokenizers import Tokenizer as RustTokenizer  # lazy: a heavy native module only this class needs

        self.name = path
        try:
            self._tok = RustTokenizer.from_file(path)
        except Exception as error:  # the Rust library raises a bare Exception for unreadable files
            raise DataError(f"{path}: not a usable tokenizer.json ({error})") from None
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        if eos_token_id is None:
            found = [i for i in map(self._tok.token_to_id, _EOS_CANDIDATES) if i is not None]
            if not found:
                raise DataError(f"{path}: no end-of-text token among {_EOS_CANDIDATES}; give the EOS id")
            eos_token_id = found[0]
        self.eos_token_id = int(eos_token_id)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        # No special tokens added: documents are separated by the EOS that `prepare` appends.
        encodings = self._tok.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]


def load_tokenizer(path: str | None, eos_token_id: int | None = None) -> Tokenizer:
    """The tokenizer.json at `path`, or the byte-level tokenizer when `path` is None."""
    if path is None:
        return ByteTokenizer()
    return HFTokenizer(path, eos_token_id)
