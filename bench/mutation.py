"""Mutation testing of the pure and integrity-critical modules: do their fast tests catch real bugs?

    .venv/bin/python bench/mutation.py [MODULE ...] [--jobs 2] [--min 90] [--show] [--record]
    make mutation [MODULES="plan manifest"]       # the same, every module by default, --min 90

Each listed module is mutated on its own by mutmut (flipped comparisons, changed constants, removed
arguments, `None` results, ...) and every mutant is run against that module's fast tests only (the
TARGETS table). A mutant is *killed* when a test fails; the score is killed / (mutants - equivalent).

Why a staging copy: mutmut 3 imports the mutated code from `mutants/`, `mutants/src` or
`mutants/source` only, while this repository keeps two source roots (operator/, trainer/) installed
in editable mode. So each module runs in `.mutation/<module>/`, a copy laid out as `src/olmo_operator`,
`src/olmo_trainer`, `tests/`, `examples/` and `pyproject.toml` with a `[tool.mutmut]` section naming
the one file to mutate and its tests; the copy's sys.path entry wins over the editable install.

Equivalent mutants (changes no test can observe, e.g. a default argument that every caller passes)
are listed in bench/mutation-equivalent.txt, one a line: `<mutant name> | <mutated line> | <reason>`.
An entry counts only while `mutmut show` of that mutant still contains the mutated line, so a list
gone stale after an edit of the module excludes nothing (it is reported instead).

Slow: a few hundred mutants per module, about 2-10 minutes each on 2 cores. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / ".mutation"
EQUIVALENT = ROOT / "bench" / "mutation-equivalent.txt"
PACKAGES = {
    "olmo_operator": ROOT / "operator" / "olmo_operator",
    "olmo_trainer": ROOT / "trainer" / "olmo_trainer",
}
# Tests that spawn processes or servers are left out: a mutant run must stay a few seconds.
FAST = ["-m", "not slow and not gpu"]


@dataclass(frozen=True)
class Target:
    source: str
    """The module's file, as `<package>/<path>` inside PACKAGES."""
    tests: tuple[str, ...]
    """Its fast tests (files or node ids under tests/)."""
    functions: tuple[str, ...] = ()
    """Only mutants of these functions count (`name` or `Class.method`); empty: the whole module."""

    def counts(self, mutant: str) -> bool:
        """Whether a mutmut key (`pkg.mod.x_name__mutmut_3`, `pkg.mod.xǁClassǁmethod__mutmut_3`) counts."""
        if not self.functions:
            return True
        function = mutant.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0]
        return function.removeprefix("x_").removeprefix("xǁ").replace("ǁ", ".") in self.functions


TARGETS: dict[str, Target] = {
    "plan": Target("olmo_operator/plan.py", ("tests/operator/test_plan.py",)),
    "layout": Target(
        "olmo_operator/layout.py", ("tests/operator/test_layout.py", "tests/operator/test_plan.py")
    ),
    "api": Target(
        "olmo_operator/api.py",
        (
            "tests/operator/test_api.py",
            "tests/operator/test_api_properties.py",
            "tests/operator/test_api_rules.py",
        ),
    ),
    # The one storage-layout module (issue 8): paths, step names and parsing, exit codes, step arithmetic.
    "storage": Target(
        "olmo_trainer/layout.py",
        (
            "tests/trainer/test_layout.py",
            "tests/trainer/test_layout_rules.py",
            "tests/trainer/test_manifest.py",
        ),
    ),
    "schedule": Target("olmo_trainer/schedule.py", ("tests/trainer/test_schedule.py",)),
    "storage_access": Target(
        "olmo_trainer/storage.py",
        ("tests/trainer/test_manifest.py", "tests/trainer/test_local_uri.py"),
    ),
    "manifest": Target(
        "olmo_trainer/manifest.py",
        (
            "tests/trainer/test_manifest.py",
            "tests/trainer/test_checkpoint.py",
            "tests/trainer/test_local_uri.py",
        ),
    ),
    "lm": Target(
        "olmo_trainer/objectives/lm.py",
        (
            "tests/trainer/test_train_units.py::test_lm_loss_is_shifted_cross_entropy_plus_z_loss",
            "tests/trainer/test_train_units.py::test_lm_loss_gradient_flows_only_through_loss",
            "tests/trainer/test_train_units.py::test_lm_loss_sum_reduction_and_low_precision_logits",
        ),
        functions=("lm_loss",),  # the loss function; the objective's plumbing is the training loop's tests
    ),
    # The losses (issue 10's formulas); rollouts and batching are the RLVR training tests' (slow, torchrun).
    "grpo": Target(
        "olmo_trainer/objectives/grpo.py",
        ("tests/trainer/test_rl_losses.py", "tests/trainer/test_rl_losses_bounds.py"),
        functions=("group_advantages", "k3_kl", "clipped_surrogate", "grpo_loss"),
    ),
    "ppo": Target(
        "olmo_trainer/objectives/ppo.py",
        ("tests/trainer/test_rl_losses.py", "tests/trainer/test_rl_losses_bounds.py"),
        functions=("last_token_index", "kl_penalised_rewards", "gae", "whiten", "value_loss", "ppo_loss"),
    ),
    "verifiers": Target(
        "olmo_trainer/verifiers.py",
        ("tests/trainer/test_rewards.py", "tests/trainer/test_rewards_constraints.py"),
    ),
    "dpo": Target(
        "olmo_trainer/objectives/dpo.py",
        ("tests/trainer/test_post_units.py",),
        functions=("dpo_terms",),  # the loss; reference caching and batching are the training loop's tests
    ),
    "rundiff": Target(
        "olmo_operator/rundiff.py", ("tests/operator/test_rundiff.py", "tests/operator/test_rundiff_exact.py")
    ),
}

KILLED = {"killed", "timeout", "caught by type check", "segfault"}
"""mutmut statuses in which a test (or the interpreter) noticed the mutant."""


@dataclass
class Score:
    module: str
    total: int = 0
    killed: int = 0
    equivalent: int = 0
    survivors: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()

    @property
    def percent(self) -> float:
        counted = self.total - self.equivalent
        return 100.0 * self.killed / counted if counted else 100.0


def stage(name: str, target: Target) -> Path:
    """A fresh copy of the sources and tests, with a [tool.mutmut] section for this one module."""
    where = STAGE / name
    shutil.rmtree(where, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package, path in PACKAGES.items():
        shutil.copytree(path, where / "src" / package, ignore=ignore)
    shutil.copytree(ROOT / "tests", where / "tests", ignore=ignore)
    shutil.copytree(ROOT / "examples", where / "examples", ignore=ignore)
    tests = [t for t in target.tests if (ROOT / t.split("::")[0]).exists()]
    if not tests:
        raise SystemExit(f"{name}: none of its tests exist: {target.tests}")
    config = {
        "source_paths": ["src"],
        "only_mutate": [f"src/{target.source}"],
        "also_copy": ["examples/"],
        "pytest_add_cli_args_test_selection": [*tests, *FAST],
    }
    lines = ["", "[tool.mutmut]", *(f"{key} = {json.dumps(value)}" for key, value in config.items())]
    (where / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + "\n".join(lines) + "\n")
    return where


def mutmut(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "mutmut"), *args],
        cwd=where,
        capture_output=True,
        text=True,
        check=False,
    )


def equivalents() -> dict[str, tuple[str, str]]:
    """name -> (mutated line, reason) from bench/mutation-equivalent.txt."""
    found: dict[str, tuple[str, str]] = {}
    for raw in EQUIVALENT.read_text().splitlines() if EQUIVALENT.exists() else []:
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        # The mutated line may itself hold " | " (a set union), the name and the reason never do.
        name, rest = raw.split(" | ", 1)
        line, reason = rest.rsplit(" | ", 1)
        found[name.strip()] = (line.strip(), reason.strip())
    return found


def added_lines(where: Path, mutant: str) -> list[str]:
    """The `+` lines of a mutant's diff (what mutmut changed), stripped."""
    shown = mutmut(where, "show", mutant).stdout
    return [ln[1:].strip() for ln in shown.splitlines() if ln.startswith("+") and not ln.startswith("+++")]


def run_module(name: str, target: Target, jobs: int, show: bool) -> Score:
    from mutmut.stats import status_by_exit_code

    where = stage(name, target)
    result = mutmut(where, "run", "--max-children", str(jobs))
    (where / "mutmut.log").write_text(result.stdout + result.stderr)
    meta = where / "mutants" / "src" / f"{target.source}.meta"
    if result.returncode != 0 or not meta.exists():
        tail = (result.stdout + result.stderr)[-3000:]
        raise SystemExit(
            f"{name}: mutmut failed (exit {result.returncode}); log {where / 'mutmut.log'}\n{tail}"
        )
    codes: dict[str, int | None] = {
        key: code
        for key, code in json.loads(meta.read_text())["exit_code_by_key"].items()
        if target.counts(key)
    }
    statuses = {key: status_by_exit_code[code] for key, code in codes.items()}
    score = Score(name, total=sum(1 for s in statuses.values() if s != "skipped"))
    score.killed = sum(1 for s in statuses.values() if s in KILLED)
    known = equivalents()
    survivors, stale = [], []
    for key, status in sorted(statuses.items()):
        if status in KILLED or status == "skipped":
            if key in known:
                stale.append(f"{key} (now {status})")
            continue
        if key in known:
            if known[key][0] in added_lines(where, key):
                score.equivalent += 1
                continue
            stale.append(f"{key} (its mutated line changed)")
        survivors.append(f"{key}: {status}")
        if show:
            print(mutmut(where, "show", key).stdout)
    score.survivors, score.stale = tuple(survivors), tuple(stale)
    return score


def table(scores: list[Score]) -> str:
    rows = [
        "| module | mutants | killed | equivalent | survived | score |",
        "|---|---|---|---|---|---|",
    ]
    for s in scores:
        survived = s.total - s.killed - s.equivalent
        rows.append(
            f"| {s.module} | {s.total} | {s.killed} | {s.equivalent} | {survived} | {s.percent:.1f}% |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"any of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run in parallel (default 2)")
    parser.add_argument(
        "--min", type=float, default=0.0, help="exit 1 when a module scores below this percent"
    )
    parser.add_argument("--show", action="store_true", help="print the diff of every surviving mutant")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    names = args.modules or list(TARGETS)
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {', '.join(TARGETS)}")
    scores = []
    for name in names:
        present = [t for t in TARGETS[name].tests if (ROOT / t.split("::")[0]).exists()]
        print(f"== {name}: {TARGETS[name].source} against {', '.join(present)}", flush=True)
        score = run_module(name, TARGETS[name], args.jobs, args.show)
        for line in score.survivors:
            print(f"   survived {line}")
        for line in score.stale:
            print(f"   stale equivalent entry {line}")
        print(f"   {score.killed}/{score.total - score.equivalent} killed = {score.percent:.1f}%", flush=True)
        scores.append(score)
    print(table(scores))
    if args.record:
        command = "make mutation" + (f' MODULES="{" ".join(args.modules)}"' if args.modules else "")
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        with (ROOT / "bench" / "RESULTS.md").open("a") as out:
            out.write(f"\n## mutation ({stamp})\n\n`{command}` (2 CPU cores, shared)\n\n{table(scores)}\n")
    low = [s.module for s in scores if s.percent < args.min]
    if low:
        print(f"below {args.min:.0f}%: {', '.join(low)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
