"""Static facts of the Dockerfiles and of the hashed lock files they install (pure readers).

    stages = dockerfile_stages(ROOT / "Dockerfile")        # [Stage(base, name, commands)], ARGs substituted
    lock = read_lock(ROOT / "requirements/trainer.lock")  # {name: Pin(version, hashes)}

Dockerfiles are parsed by `dockerfile` (Docker's own Go parser, buildkit); no Docker engine runs here.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DIGEST_REF = re.compile(r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?@sha256:[0-9a-f]{64}$")


@dataclass
class Stage:
    base: str
    """The FROM reference after ARG substitution (a registry reference or an earlier stage's name)."""
    name: str | None
    commands: list[dockerfile.Command] = field(default_factory=list)

    def values(self, cmd: str) -> list[tuple[str, ...]]:
        return [c.value for c in self.commands if c.cmd == cmd]


def _substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def dockerfile_stages(path: Path) -> list[Stage]:
    """The build stages in order, FROM references resolved with the ARG defaults declared before them."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "ARG" and not stages:
            name, _, default = command.value[0].partition("=")
            args[name] = default
        elif command.cmd == "FROM":
            words = [w for w in command.value if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(_substitute(words[0], args), name))
        elif stages:
            stages[-1].commands.append(command)
    return stages


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: tuple[str, ...]


def read_lock(path: Path) -> dict[str, Pin]:
    """{canonical name: Pin} of a pip/uv lock; ValueError for an entry that is not `name==version`."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    pins: dict[str, Pin] = {}
    for raw in joined.splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        requirement, *options = line.split(" --")
        req = Requirement(requirement.strip())
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if len(exact) != 1:
            raise ValueError(f"{path.name}: {requirement.strip()!r} is not pinned with ==")
        hashes = tuple(o.split("=", 1)[1].strip() for o in options if o.startswith("hash="))
        pins[canonicalize_name(req.name)] = Pin(exact[0], hashes)
    return pins


def pyproject_pins(root: Path, extras: tuple[str, ...]) -> dict[str, str]:
    """{canonical name: version} of the core dependencies and the given extras of pyproject.toml."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"]) + [d for e in extras for d in project["optional-dependencies"][e]]
    pins = {}
    for line in lines:
        req = Requirement(line)
        (spec,) = req.specifier
        pins[canonicalize_name(req.name)] = spec.version
    return pins
