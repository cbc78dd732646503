"""`olmorun data prepare|synth`: JSONL -> token arrays -> dataset, synthetic corpora, and learnability."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from olmo_operator import cli
from olmo_trainer.config import DataConfig, ModelConfig
from olmo_trainer.data import DistributedBatches, build_dataset
from olmo_trainer.data.synth import synthesize
from olmo_trainer.model import Transformer

DOCS = ["Hello, world.", "Ünïcode — fine", "The third document is a little longer than the others."]


def write_jsonl(path: Path, texts: list[str]) -> str:
    lines = "".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(lines.encode()))
    else:
        path.write_text(lines)
    return str(path)


def test_prepare_bytes_then_build_dataset_round_trip(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl.gz", DOCS * 4)
    assert cli.main(["data", "prepare", src, "--out", str(tmp_path / "out")]) == 0
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    stream = [b for text in DOCS * 4 for b in [*text.encode("utf-8"), 256]]
    assert (index["docs"], index["tokens"], index["dtype"], index["tokenizer"]) == (
        12,
        len(stream),
        "uint16",
        "bytes",
    )
    array = tmp_path / "out" / index["files"][0]["path"]
    assert array.stat().st_size == 2 * len(stream)  # headerless
    cfg = DataConfig.model_validate(
        {
            "sources": [{"name": "docs", "paths": [str(tmp_path / "out" / "*.npy")]}],
            "sequenceLength": 32,
            "dtype": "uint16",
        }
    )
    ds = build_dataset(cfg, seed=0, work_dir=str(tmp_path / "work"))
    assert len(ds) == len(stream) // 32
    rows = {tuple(ds[i].tolist()) for i in range(len(ds))}
    assert rows == {tuple(stream[k * 32 : (k + 1) * 32]) for k in range(len(ds))}


def test_prepare_with_a_tokenizer_json(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "[UNK]"])
    tok.train_from_iterator(DOCS * 10, trainer)
    tok_path = tmp_path / "tokenizer.json"
    tok.save(str(tok_path))
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    args = [
        "data",
        "prepare",
        src,
        "--out",
        str(tmp_path / "out"),
        "--tokenizer",
        str(tok_path),
        "--dtype",
        "uint32",
    ]
    assert cli.main(args) == 0
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["dtype"] == "uint32" and index["eos_token_id"] == 0
    tokens = np.fromfile(tmp_path / "out" / index["files"][0]["path"], dtype=np.uint32)
    docs = np.split(tokens, np.flatnonzero(tokens == 0) + 1)[:-1]
    assert [tok.decode(d[:-1].tolist()) for d in docs] == DOCS


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": 1, "text": "ok"}\nnot json\n', "2: not JSON"),
        ('{"id": 1, "body": "no text"}\n', '"text" field'),
    ],
)
def test_prepare_reports_bad_input_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    (tmp_path / "bad.jsonl").write_text(content)
    assert cli.main(["data", "prepare", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_prepare_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["data", "prepare", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)]) == 2
    assert "no such input file" in capsys.readouterr().err
    src = write_jsonl(tmp_path / "d.jsonl", DOCS)
    (tmp_path / "broken.json").write_text("{")
    assert (
        cli.main(
            ["data", "prepare", src, "--out", str(tmp_path), "--tokenizer", str(tmp_path / "broken.json")]
        )
        == 2
    )
    assert "not a usable tokenizer.json" in capsys.readouterr().err


def test_synth_cli_writes_the_bytes_a_synthetic_source_uses(tmp_path: Path) -> None:
    assert (
        cli.main(["data", "synth", str(tmp_path / "s"), "--kind", "math", "--tokens", "3K", "--seed", "4"])
        == 0
    )
    written = np.fromfile(tmp_path / "s" / "synth-math-3000-s4.npy", dtype=np.uint16)
    cfg = DataConfig.model_validate(
        {
            "sources": [{"name": "m", "synthetic": {"kind": "math", "numTokens": 3000, "seed": 4}}],
            "sequenceLength": 8,
        }
    )
    build_dataset(cfg, seed=0, work_dir=str(tmp_path / "w"))
    materialised = np.fromfile(tmp_path / "w" / "synthetic" / "synth-math-3000-s4.npy", dtype=np.uint16)
    assert np.array_equal(written, materialised) and written.size == 3000
    assert np.array_equal(written, synthesize("math", 3000, seed=4))
    assert not np.array_equal(written, synthesize("math", 3000, seed=5))
    assert json.loads((tmp_path / "s" / "index.json").read_text())["eos_token_id"] == 256


def test_synth_cli_rejects_a_bad_token_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["data", "synth", str(tmp_path), "--tokens", "lots"]) == 2
    assert "--tokens" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["general", "math"])
def test_synthetic_data_is_learnable_by_the_tiny_model(tmp_path: Path, kind: str) -> None:
    """A tiny model's loss falls well below the unigram entropy within 80 steps on CPU."""
    torch.manual_seed(0)
    cfg = DataConfig.model_validate(
        {"sources": [{"name": kind, "synthetic": {"kind": kind, "numTokens": "200K"}}], "sequenceLength": 64}
    )
    ds = build_dataset(cfg, seed=0, work_dir=str(tmp_path))
    counts = np.bincount(synthesize(kind, 200_000, seed=0), minlength=257) / 200_000
    unigram = -float((counts[counts > 0] * np.log(counts[counts > 0])).sum())
    model = Transformer(ModelConfig.preset("tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches = iter(
        DistributedBatches(
            ds,
            global_batch_size=16,
            micro_batch_size=16,
            rank=0,
            world_size=1,
            seed=0,
            work_dir=str(tmp_path),
        )
    )
    losses = []
    for _ in range(80):
        (tokens,) = next(batches)
        logits = model(tokens)[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"{kind}: unigram {unigram:.3f} nats, final loss {np.mean(losses[-10:]):.3f}")
    assert math.log(260) > unigram > 2.5
    assert np.mean(losses[-10:]) < 0.75 * unigram
