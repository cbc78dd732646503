"""Which code is running: the git commit of the checkout this package runs from (torch-free).

The one home of that rule: env.json records it for every job (environment.py), and `olmorun --version`
prints it without importing torch.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_state(directory: Path | None = None) -> tuple[str | None, bool | None]:
    """(HEAD commit, working tree dirty) of the checkout holding this package; (None, None) outside one."""
    where = directory or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head or None, bool(dirty)
