"""The trainer and operator images, checked statically (no Docker engine here), and their hashed locks."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.deploy.images import DIGEST_REF, Stage, dockerfile_stages, pyproject_pins, read_lock

ROOT = Path(__file__).parents[2]
TRAINER, OPERATOR = ROOT / "Dockerfile", ROOT / "images" / "operator.Dockerfile"
# Which extras each image installs, as `make lock` resolves them.
LOCKS = {"trainer": ("trainer", "s3", "gcs"), "operator": ("operator", "s3", "gcs")}
OCI_LABELS = {f"org.opencontainers.image.{k}" for k in ("source", "revision", "version", "created")}
GPU_ONLY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")


def _final(path: Path) -> Stage:
    return dockerfile_stages(path)[-1]


@pytest.mark.parametrize("path", [TRAINER, OPERATOR], ids=["trainer", "operator"])
def test_bases_are_pinned_by_digest_and_never_latest(path: Path) -> None:
    stages = dockerfile_stages(path)
    names = {s.name for s in stages if s.name}
    for stage in stages:
        assert stage.base in names or DIGEST_REF.match(stage.base), (
            f"{path.name}: FROM {stage.base} has no digest"
        )
        assert ":latest" not in stage.base
    assert "latest" not in path.read_text().replace("# ", "")


@pytest.mark.parametrize("path", [TRAINER, OPERATOR], ids=["trainer", "operator"])
def test_final_stage_runs_as_uid_1000_with_labels_and_source_date_epoch(path: Path) -> None:
    final = _final(path)
    (user,) = final.values("USER")
    assert user == ("1000:1000",), "the launcher runs training pods as uid 1000 (non-root)"
    labels = {
        value[i]: value[i + 1].strip('"') for value in final.values("LABEL") for i in range(0, len(value), 2)
    }
    assert set(labels) >= OCI_LABELS, OCI_LABELS - set(labels)
    assert (
        labels["org.opencontainers.image.created"] == "${CREATED}"
    )  # make image: SOURCE_DATE_EPOCH as RFC 3339
    env = {value[i]: value[i + 1] for value in final.values("ENV") for i in range(0, len(value), 2)}
    assert env["SOURCE_DATE_EPOCH"] == "${SOURCE_DATE_EPOCH}" and env["PATH"].startswith("/opt/venv/bin:")
    assert any(v[0].startswith("SOURCE_DATE_EPOCH=") for v in final.values("ARG"))


def test_entrypoints() -> None:
    assert _final(TRAINER).values("ENTRYPOINT") == [("python", "-m", "olmo_trainer")]
    assert _final(OPERATOR).values("ENTRYPOINT") == [("python", "-m", "olmo_operator")]


@pytest.mark.parametrize(
    ("path", "lock"), [(TRAINER, "trainer"), (OPERATOR, "operator")], ids=["trainer", "operator"]
)
def test_the_lock_is_installed_with_require_hashes_and_nothing_is_resolved(path: Path, lock: str) -> None:
    runs = [" ".join(v) for stage in dockerfile_stages(path) for v in stage.values("RUN")]
    installs = [r for r in runs if "pip install" in r]
    assert installs, path.name
    for command in installs:
        # Either a hashed lock, or the project itself with nothing else (no dependency resolution at all).
        assert ("--require-hashes" in command and " -r " in command) or (
            "--no-deps" in command and "--no-index" in command and "--no-build-isolation" in command
        ), command
        assert "--no-deps" in command, command
    copied = {
        v[0] for stage in dockerfile_stages(path) for v in stage.values("COPY") if not v[0].startswith("--")
    }
    args = dict(v[0].split("=", 1) for s in dockerfile_stages(path) for v in s.values("ARG") if "=" in v[0])
    sources = {args.get(c.strip("${}"), c) for c in copied}  # COPY ${TRAINER_LOCK} reads the ARG's default
    assert f"requirements/{lock}.lock" in sources, sources
    if lock == "trainer":
        assert args["TORCH_VARIANT"] == "cu130"  # PyPI's torch 2.13.0 for Linux is built for CUDA 13.0


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_lock_has_hashes_and_agrees_with_pyproject_and_the_dev_lock(lock: str) -> None:
    pins = read_lock(ROOT / "requirements" / f"{lock}.lock")
    assert all(pin.hashes for pin in pins.values()), [n for n, p in pins.items() if not p.hashes]
    assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for pin in pins.values() for h in pin.hashes)
    wanted = pyproject_pins(ROOT, LOCKS[lock])
    missing = sorted(set(wanted) - set(pins))
    assert not missing, f"{lock}.lock lacks {missing}: run `make lock`"
    differ = {n: (v, pins[n].version) for n, v in wanted.items() if pins[n].version != v}
    assert not differ, (
        f"{lock}.lock disagrees with pyproject.toml (pyproject, lock): {differ}; run `make lock`"
    )
    # Built with --constraints requirements.lock: the image runs the versions the tests ran, except the
    # CUDA-only packages (the development machines install torch's CPU build) and the build backend.
    dev = read_lock(ROOT / "requirements.lock")
    build = {
        Requirement(line).name
        for line in (ROOT / "requirements/build.in").read_text().splitlines()
        if line and not line.startswith("#")
    }
    drift = {
        n: (p.version, dev[n].version) for n, p in pins.items() if n in dev and dev[n].version != p.version
    }
    assert not drift, f"{lock}.lock and requirements.lock disagree: {drift}"
    absent = sorted(n for n in set(pins) - set(dev) - build if not GPU_ONLY.match(n))
    assert not absent, f"{lock}.lock has packages the dev environment lacks: {absent}"


def test_operator_lock_has_no_torch_and_trainer_lock_has_the_cuda_build() -> None:
    operator = read_lock(ROOT / "requirements" / "operator.lock")
    heavy = sorted(n for n in operator if GPU_ONLY.match(n))
    assert heavy == [], f"the operator image would install {heavy}"
    trainer = read_lock(ROOT / "requirements" / "trainer.lock")
    assert trainer["torch"].version == pyproject_pins(ROOT, ("trainer",))["torch"]
    assert any(n.startswith("nvidia-") for n in trainer), (
        "PyPI's torch for Linux brings CUDA in nvidia-* wheels"
    )


def test_build_backend_and_bootstrap_pins_follow_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    build = [
        line
        for line in (ROOT / "requirements/build.in").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert build == pyproject["build-system"]["requires"]
    for lock in ("trainer", "operator"):
        pins = read_lock(ROOT / "requirements" / f"{lock}.lock")
        for line in build:
            req = Requirement(line)
            assert pins[req.name].version == next(iter(req.specifier)).version
    bootstrap = read_lock(ROOT / "requirements" / "bootstrap.lock")
    assert set(bootstrap) == {"uv"} and bootstrap["uv"].hashes
    assert bootstrap["uv"].version == pyproject_pins(ROOT, ("dev",))["uv"]


def test_read_lock_refuses_an_unpinned_entry(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    lock.write_text("torch>=2 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(ValueError, match="not pinned"):
        read_lock(lock)
