"""`pip install olmorun[operator]` from a built wheel, in a fresh virtual environment, without a checkout.

uv builds the sdist and the wheel from it (as a release does: the sdist must hold everything the wheel
needs), then installs the wheel with its `operator` extra into a new venv from the package index, and
runs `olmorun validate` there, outside the repository. The `trainer` extra (a multi-GB CUDA torch from
the index) is checked in the wheel's metadata instead of installed.
"""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
UV = Path(sys.executable).parent / "uv"

pytestmark = pytest.mark.slow


def _run(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result


def test_the_wheel_installs_the_cli_into_a_fresh_venv_and_validates_a_spec(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(UV, "build", "--no-config", "--out-dir", dist, ROOT, cwd=tmp_path)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (wheel,) = dist.glob(f"olmorun-{project['version']}-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = f"olmorun-{project['version']}.dist-info"
        metadata = email.message_from_string(archive.read(f"{info}/METADATA").decode())
    assert f"{info}/licenses/LICENSE" in names
    assert {"operator", "trainer", "s3", "gcs"} <= set(metadata.get_all("Provides-Extra") or [])
    requires = metadata.get_all("Requires-Dist") or []
    for pin in project["optional-dependencies"]["trainer"]:
        assert f'{pin}; extra == "trainer"' in requires, pin

    venv = tmp_path / "venv"
    _run(UV, "venv", "--no-config", "--python", sys.executable, venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(
        UV,
        "pip",
        "install",
        "--no-config",
        "--python",
        python,
        f"olmorun[operator] @ {wheel.as_uri()}",
        cwd=tmp_path,
    )
    shutil.copytree(ROOT / "examples", tmp_path / "examples")  # the spec and the data it names
    spec = tmp_path / "examples" / "olmorun-tiny.yaml"
    result = _run(venv / "bin" / "olmorun", "validate", spec, cwd=tmp_path)
    assert "valid" in result.stdout and "olmo2-tiny" in result.stdout
    imported = _run(python, "-c", "import olmo_operator, kopf; print(olmo_operator.__file__)", cwd=tmp_path)
    assert str(venv) in imported.stdout  # the installed package, not the checkout
