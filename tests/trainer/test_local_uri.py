"""A local path and its file:// URI name one place (issue 11 #2): storage.path_to_uri / uri_to_path are
the one pair that encodes and decodes, and every way to storage (filesystem, open_uri, the data readers,
the run diff's portable roots) goes through them. Names need quoting: space, `%`, `#`, `?`, non-ASCII."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from olmo_operator.api import parse_olmorun
from olmo_operator.runfiles import RUN_PLACEHOLDER, portable, root_pattern
from olmo_trainer.data.arrays import expand_paths
from olmo_trainer.data.chat import read_rows
from olmo_trainer.storage import filesystem, open_uri, path_to_uri, uri_to_path

ROOT = Path(__file__).parents[2]
NAMES = ["my run", "100%", "a%20b", "#1?x=2", "ü", "数据", "mixed dir #2 %41 ü 数据"]


def test_hand_computed_uris() -> None:
    assert path_to_uri("/tmp/my run/ü") == "file:///tmp/my%20run/%C3%BC"
    assert path_to_uri("/d/100%/#1?x") == "file:///d/100%25/%231%3Fx"
    assert path_to_uri("/数据") == "file:///%E6%95%B0%E6%8D%AE"
    assert uri_to_path("file:///tmp/my%20run/%C3%BC") == "/tmp/my run/ü"
    assert uri_to_path("file://localhost/a%20b") == "/a b"  # RFC 8089: an empty or localhost authority
    assert uri_to_path("file:/a%20b") == "/a b"
    assert uri_to_path("file:///d/100%25") == "/d/100%"  # decoded once: %25 is a literal %
    assert uri_to_path("file:///tmp/my run") == "/tmp/my run"  # a hand-written, unencoded URI
    assert uri_to_path("file:///d/100%") == "/d/100%"  # a % that encodes nothing stays
    for other in ("s3://bucket/my%20run", "gs://b/x", "memory://a%20b", "/tmp/my run", "rel/a%20b"):
        assert uri_to_path(other) == other  # only file: URIs are decoded; object keys are not paths


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_and_one_place(tmp_path: Path, name: str) -> None:
    path = tmp_path / name / "sub"
    uri = path_to_uri(path)
    assert uri.isascii() and not any(c in uri for c in " #?") and uri.startswith("file:///")
    assert uri_to_path(uri) == str(path)
    with open_uri(f"{uri}/x.json", "w", auto_mkdir=True) as stream:
        json.dump({"name": name}, stream)
    assert json.loads((path / "x.json").read_text()) == {"name": name}  # written where the path says
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # and nowhere else
    fs, inside = filesystem(f"{uri}/x.json")
    assert inside == str(path / "x.json") and fs.exists(inside)
    with open_uri(str(path / "x.json"), "r") as stream:
        assert json.load(stream) == {"name": name}


def test_data_readers_take_the_uri_of_a_folder_that_needs_quoting(tmp_path: Path) -> None:
    folder = tmp_path / "tokens #1 ü 数据"
    folder.mkdir()
    for index in range(2):
        np.arange(10, dtype=np.uint16).tofile(folder / f"part {index}.npy")
    found = expand_paths([f"{path_to_uri(folder)}/*.npy"])
    assert found == [str(folder / "part 0.npy"), str(folder / "part 1.npy")]
    chat = folder / "chat 100%.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    rows = list(read_rows([path_to_uri(chat)]))
    assert [(path, number) for path, number, _ in rows] == [(str(chat), 1)]


def test_run_diff_replaces_a_local_root_with_spaces_whole() -> None:
    """Two runs of one spec in `/tmp/my run` and `file:///elsewhere/x%20y` have the same portable config."""
    run = parse_olmorun(yaml.safe_load((ROOT / "examples" / "olmorun-tiny.yaml").read_text()))
    roots = root_pattern(run)
    here = {
        "saveDir": "/tmp/my run/storage/default/olmo2-tiny/phases/soup",
        "soupFrom": ["/tmp/my run/storage/default/olmo2-tiny/archive/anneal-s1/step3"],
    }
    there = {
        "saveDir": "file:///elsewhere/x%20y/default/olmo2-tiny/phases/soup",
        "soupFrom": ["file:///elsewhere/x%20y/default/olmo2-tiny/archive/anneal-s1/step3"],
    }
    assert (
        portable(here, roots)
        == portable(there, roots)
        == {
            "saveDir": f"{RUN_PLACEHOLDER}/phases/soup",
            "soupFrom": [f"{RUN_PLACEHOLDER}/archive/anneal-s1/step3"],
        }
    )
    command = (
        "torchrun -m olmo_trainer soup --config /tmp/wd/storage/default/olmo2-tiny/phases/soup/config.json"
    )
    assert (
        portable(command, roots)
        == f"torchrun -m olmo_trainer soup --config {RUN_PLACEHOLDER}/phases/soup/config.json"
    )
