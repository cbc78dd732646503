"""`olmorun export-hf`: a committed checkpoint becomes a transformers folder with our exact logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from olmo_operator import cli
from olmo_trainer import manifest
from olmo_trainer.checkpoint import Checkpointer
from olmo_trainer.config import ModelConfig, TrainConfig
from olmo_trainer.model import Transformer
from olmo_trainer.storage import filesystem

MODEL = ModelConfig.preset("tiny", n_kv_heads=2)


def trained_checkpoint(
    tmp: Path, *, with_config: bool = True, seed: int = 3
) -> tuple[str, Transformer, TrainConfig]:
    cfg = TrainConfig(
        run="r", phase="pretrain", kind="pretrain", seed=seed, model=MODEL, save_dir=str(tmp / "run")
    )
    model = Transformer(MODEL)
    model.init_weights(torch.Generator().manual_seed(seed))
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 260, (2, 16), generator=torch.Generator().manual_seed(4))
    model(ids).logsumexp(-1).mean().backward()  # one step moves every weight, norms included
    optim.step()
    ckpt = Checkpointer(
        f"{cfg.save_dir}/checkpoints",
        cfg.checkpoint,
        config_hash=cfg.config_hash(),
        train_config=cfg if with_config else None,
    )
    return ckpt.save(1, {"model": model, "optim": optim}), model.eval(), cfg


def export(*argv: str) -> int:
    return cli.main(["export-hf", *argv])


def test_export_loads_in_transformers_with_equal_logits(tmp_path: Path) -> None:
    uri, model, _ = trained_checkpoint(tmp_path)
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text('{"version": "1.0"}')
    out = tmp_path / "hf"

    assert export(uri, str(out), "--tokenizer", str(tokenizer)) == 0

    assert (out / "tokenizer.json").read_text() == '{"version": "1.0"}'
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(hf).__name__ == "Olmo2ForCausalLM"
    ids = torch.randint(0, 260, (2, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits.float(), model(ids), rtol=1e-5, atol=1e-5)


def test_tokenizer_recorded_in_the_checkpoint_is_exported(tmp_path: Path) -> None:
    uri, _, _ = trained_checkpoint(tmp_path)
    # A checkpoint that carries its tokenizer (committed with it in the MANIFEST).
    fs, path = filesystem(uri)
    (Path(uri) / "tokenizer").mkdir()
    (Path(uri) / "tokenizer" / "tokenizer_config.json").write_text("{}")
    manifest.commit(fs, path, manifest.build_manifest(fs, path, step=1))
    assert export(uri, str(tmp_path / "hf")) == 0
    assert (tmp_path / "hf" / "tokenizer_config.json").exists()


def test_bf16_export(tmp_path: Path) -> None:
    uri, _, _ = trained_checkpoint(tmp_path)
    assert export(uri, str(tmp_path / "hf"), "--dtype", "bfloat16") == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    assert hf.model.embed_tokens.weight.dtype == torch.bfloat16


def test_refusals_are_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri, _, _ = trained_checkpoint(tmp_path)
    out = str(tmp_path / "hf")
    assert export(uri, out) == 0
    assert export(uri, out) == 2
    assert "already holds an export" in capsys.readouterr().err

    shard = Path(uri) / "__0_0.distcp"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    assert export(uri, str(tmp_path / "hf2")) == 2
    assert "FAILED (0 missing, 1 corrupted" in capsys.readouterr().err

    (Path(uri) / manifest.MANIFEST_NAME).unlink()
    assert export(uri, str(tmp_path / "hf2")) == 2
    assert "NOT COMMITTED" in capsys.readouterr().err
    # Nothing there: no checkpoint at all, as `olmorun verify` says too (manifest.resolve_checkpoint).
    assert export(str(tmp_path / "nowhere" / "step1"), str(tmp_path / "hf2")) == 2
    assert "is not a checkpoint: no MANIFEST.json and no stepN/ directories" in capsys.readouterr().err


def test_checkpoint_without_config_needs_config_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, model, cfg = trained_checkpoint(tmp_path, with_config=False)
    assert export(uri, str(tmp_path / "hf")) == 2
    assert "has no config.json: pass --config" in capsys.readouterr().err

    wrong = tmp_path / "wrong.json"
    wrong.write_text(cfg.model_copy(update={"model": ModelConfig.preset("tiny")}).to_json())
    assert export(uri, str(tmp_path / "hf"), "--config", str(wrong)) == 2
    assert "Size mismatch" in capsys.readouterr().err

    right = tmp_path / "config.json"
    right.write_text(cfg.to_json())
    assert export(uri, str(tmp_path / "hf"), "--config", str(right)) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    ids = torch.randint(0, 260, (1, 8), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits.float(), model(ids), rtol=1e-5, atol=1e-5)


def test_a_soup_exports_like_any_checkpoint(tmp_path: Path) -> None:
    """The recipe's end: anneal seeds -> soup -> Hugging Face folder."""
    from olmo_trainer.checkpoint import load_model_weights
    from olmo_trainer.soup import average_checkpoints

    first, model_a, _ = trained_checkpoint(tmp_path / "a", seed=1)
    second, model_b, _ = trained_checkpoint(tmp_path / "b", seed=2)
    soup = average_checkpoints([first, second], str(tmp_path / "soup" / "checkpoints" / "step1"))
    assert export(soup, str(tmp_path / "hf")) == 0

    ours = Transformer(MODEL)
    load_model_weights(soup, ours)
    torch.testing.assert_close(ours.lm_head.weight, (model_a.lm_head.weight + model_b.lm_head.weight) / 2)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    ids = torch.randint(0, 260, (2, 12), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits.float(), ours.eval()(ids), rtol=1e-5, atol=1e-5)


def test_a_directory_of_steps_exports_its_latest_committed_step(tmp_path: Path) -> None:
    uri, _, _ = trained_checkpoint(tmp_path)
    checkpoints = uri.rsplit("/", 1)[0]
    (Path(checkpoints) / "step7").mkdir()  # a torn save: no MANIFEST, so not a checkpoint
    assert export(checkpoints, str(tmp_path / "hf")) == 0
    assert (tmp_path / "hf" / "config.json").exists()
