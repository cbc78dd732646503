"""The operator side never imports torch (nor numpy): its image has none."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import olmo_operator

# The CLI's trainer commands (data, export-hf) import the trainer lazily, inside their handlers.
MODULES = sorted(
    f"olmo_operator.{m.name}" for m in pkgutil.iter_modules(olmo_operator.__path__) if m.name != "__main__"
)


def test_operator_modules_import_without_torch() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = sorted(m for m in ('torch', 'numpy') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"operator modules pulled in: {result.stdout.strip()}"
    assert "olmo_operator.api" in MODULES and "olmo_operator.cli" in MODULES
