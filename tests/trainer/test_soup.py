"""Soup: averaging committed checkpoints into a new committed, verifiable, loadable checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from olmo_trainer import manifest
from olmo_trainer.checkpoint import Checkpointer, load_full_state_dict, load_model_weights, manifest_sha256
from olmo_trainer.config import CheckpointConfig, ModelConfig, TrainConfig
from olmo_trainer.model import Transformer
from olmo_trainer.soup import SoupError, average_checkpoints
from olmo_trainer.storage import filesystem

REPO = Path(__file__).resolve().parents[2]
TINY = ModelConfig.preset("tiny", n_layers=1)


def anneal_config(tmp: Path, seed: int, model: ModelConfig = TINY) -> TrainConfig:
    return TrainConfig(
        run="r",
        phase=f"anneal-s{seed}",
        kind="anneal",
        seed=seed,
        model=model,
        save_dir=str(tmp / f"anneal-s{seed}"),
    )


def ingredient(
    tmp: Path, seed: int, step: int, model: ModelConfig = TINY
) -> tuple[str, dict[str, torch.Tensor]]:
    """A committed final checkpoint of a (pretend) anneal run, and its weights."""
    cfg = anneal_config(tmp, seed, model)
    torch.manual_seed(seed)
    net = Transformer(model)
    ckpt = Checkpointer(
        f"{cfg.save_dir}/checkpoints", cfg.checkpoint, config_hash=cfg.config_hash(), train_config=cfg
    )
    uri = ckpt.save(step, {"model": net, "optim": torch.optim.AdamW(net.parameters())}, final=True)
    return uri, {k: v.clone() for k, v in net.state_dict().items()}


def test_average_of_three_is_the_mean_and_names_its_ingredients(tmp_path: Path) -> None:
    made = [ingredient(tmp_path, seed, step) for seed, step in ((42, 10), (42069, 12), (666, 11))]
    uris = [uri for uri, _ in made]
    out = average_checkpoints(uris, str(tmp_path / "soup" / "step12"), config_hash="soup-hash")

    fs, path = filesystem(out)
    assert manifest.verify(fs, path).ok
    record = manifest.read_manifest(fs, path)
    assert record is not None and record["step"] == 12 and record["configHash"] == "soup-hash"
    assert record["extra"]["final"] is True
    assert record["extra"]["soup"]["ingredients"] == [
        {"uri": uri, "step": step, "manifestSha256": manifest_sha256(uri)}
        for uri, step in zip(uris, (10, 12, 11), strict=True)
    ]
    soup = load_full_state_dict(out)
    for name, tensor in soup.items():
        expected = (made[0][1][name] + made[1][1][name] + made[2][1][name]) / 3
        torch.testing.assert_close(tensor, expected, rtol=1e-6, atol=1e-7, msg=name)
        if "norm" not in name:  # norms start at 1 in every ingredient
            assert not torch.equal(tensor, made[0][1][name])

    # A trainer's init_from loads it like any parent checkpoint; it carries the model config for export.
    net = Transformer(TINY)
    load_model_weights(out, net)
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, soup[name])
    assert json.loads((Path(out) / "config.json").read_text())["model"]["nLayers"] == 1


def test_bf16_ingredients_make_a_bf16_soup_summed_in_fp32(tmp_path: Path) -> None:
    weights = []
    for seed in (1, 2):
        net = nn.Linear(3, 2).to(torch.bfloat16)
        with torch.no_grad():
            net.weight.fill_(1.0 + 2**-7 * seed)  # bf16 steps of 2^-7 near 1: the fp32 mean lands on one
        uri = Checkpointer(str(tmp_path / f"s{seed}"), CheckpointConfig(), config_hash="h").save(
            1, {"model": net}
        )
        weights.append(uri)
    soup = load_full_state_dict(average_checkpoints(weights, str(tmp_path / "soup")))
    assert soup["weight"].dtype == torch.bfloat16
    assert torch.equal(soup["weight"], torch.full((2, 3), 1.0 + 1.5 * 2**-7).to(torch.bfloat16))


def test_refuses_different_model_configs(tmp_path: Path) -> None:
    a, _ = ingredient(tmp_path, 1, 5)
    b, _ = ingredient(tmp_path, 2, 5, model=ModelConfig.preset("tiny", n_layers=2))
    with pytest.raises(SoupError, match=r"different models.*n_layers"):
        average_checkpoints([a, b], str(tmp_path / "soup"))
    assert not (tmp_path / "soup").exists()


def test_refuses_different_shapes_without_configs(tmp_path: Path) -> None:
    uris = [
        Checkpointer(str(tmp_path / name), CheckpointConfig(), config_hash="h").save(1, {"model": net})
        for name, net in (("a", nn.Linear(4, 3)), ("b", nn.Linear(5, 3)))
    ]
    with pytest.raises(SoupError, match=r"weight has shape \(3, 5\) but .* has \(3, 4\)"):
        average_checkpoints(uris, str(tmp_path / "soup"))


def test_refuses_a_corrupted_or_uncommitted_ingredient(tmp_path: Path) -> None:
    a, _ = ingredient(tmp_path, 1, 5)
    b, _ = ingredient(tmp_path, 2, 5)
    shard = Path(b) / "__0_0.distcp"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    with pytest.raises(SoupError, match="1 corrupted"):
        average_checkpoints([a, b], str(tmp_path / "soup"))
    (Path(a) / manifest.MANIFEST_NAME).unlink()
    with pytest.raises(SoupError, match="NOT COMMITTED"):
        average_checkpoints([a], str(tmp_path / "soup"))
    with pytest.raises(SoupError, match="listed twice"):
        average_checkpoints([b, b], str(tmp_path / "soup"))


@pytest.mark.slow
def test_soup_phase_entry_point_is_discoverable_and_idempotent(tmp_path: Path) -> None:
    uris = [ingredient(tmp_path, seed, step)[0] for seed, step in ((42, 7), (666, 9))]
    cfg = TrainConfig(
        run="r",
        phase="soup",
        kind="soup",
        seed=0,
        model=TINY,
        save_dir=str(tmp_path / "soup"),
        soup_from=uris,
    )
    config = tmp_path / "soup-config.json"
    config.write_text(cfg.to_json())
    command = [sys.executable, "-m", "olmo_trainer", "soup", "--config", str(config)]

    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    ckpt = Checkpointer(f"{cfg.save_dir}/checkpoints", cfg.checkpoint, config_hash=cfg.config_hash())
    assert ckpt.committed()[-1] == (9, f"{cfg.save_dir}/checkpoints/step9")
    lines = [json.loads(line) for line in (tmp_path / "soup" / "metrics.jsonl").read_text().splitlines()]
    assert lines == [
        {"soup": 2, "step": 9, "checkpoint": f"{cfg.save_dir}/checkpoints/step9", "ingredients": uris}
    ]
    before = (tmp_path / "soup" / "checkpoints" / "step9" / manifest.MANIFEST_NAME).read_bytes()

    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already committed" in again.stdout
    assert (tmp_path / "soup" / "checkpoints" / "step9" / manifest.MANIFEST_NAME).read_bytes() == before


def test_holds_one_ingredient_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory stays at about two models (the fp32 sum + one ingredient), whatever the number of
    ingredients."""
    import gc
    import weakref

    from olmo_trainer import soup as soup_module

    uris = [ingredient(tmp_path, seed, 5)[0] for seed in (1, 2, 3)]
    loaded: list[weakref.ref[torch.Tensor]] = []
    alive_at_load: list[int] = []
    real = soup_module.load_full_state_dict

    def tracking(uri: str, **kwargs: object) -> dict[str, torch.Tensor]:
        gc.collect()
        alive_at_load.append(sum(ref() is not None for ref in loaded))
        weights = real(uri, **kwargs)  # type: ignore[arg-type]
        loaded.extend(weakref.ref(t) for t in weights.values())
        return weights

    monkeypatch.setattr(soup_module, "load_full_state_dict", tracking)
    average_checkpoints(uris, str(tmp_path / "soup"))
    assert alive_at_load == [0, 0, 0]
