"""A run recreated under its name continues the earlier run's storage when told to (issue 26 #5).

Before, the StorageInUseError of a recreated run offered two fixes, deleting the storage or renaming
the run, and both lost the trained checkpoint. Now it names a third, which keeps it: the annotation
`olmorun.dev/adopt-storage-of: <earlier uid>`. With it the recreated run resumes from the earlier run's
committed checkpoint (the same save dir), and archives it; without it, or naming another uid, it is
still refused (never silently). Storage is a local directory; jobs live in the scripted launcher of
tests/operator/test_reconcile.py (the scheduler is the edge that cannot run here).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from olmo_operator import archive, layout
from olmo_operator.effects import ADOPT_ANNOTATION, StorageInUseError
from olmo_operator.reconcile import reconcile_plan
from tests.operator.test_reconcile import T0, ScriptedLauncher, make_run, step, train


def test_a_recreated_run_adopts_the_earlier_storage_only_when_told_and_keeps_its_checkpoint(
    tmp_path: Path,
) -> None:
    first = step(make_run(tmp_path.as_uri()), ScriptedLauncher())
    final = train(layout.save_dir(first, first.phase("pretrain"), 6198), 8)
    # The earlier run is gone (failed, deleted); the same spec is applied again: a new uid.
    recreated = make_run(tmp_path.as_uri())
    recreated.metadata.uid = "uid-8"
    with pytest.raises(StorageInUseError, match=f"annotate this OlmoRun {ADOPT_ANNOTATION}=uid-7") as refused:
        reconcile_plan(recreated, launcher=ScriptedLauncher(), now=T0)
    assert "Delete that storage path" not in str(refused.value)  # no fix that loses the checkpoint
    recreated.metadata.annotations[ADOPT_ANNOTATION] = "uid-6"  # someone else's: still refused
    with pytest.raises(StorageInUseError):
        reconcile_plan(recreated, launcher=ScriptedLauncher(), now=T0)

    recreated.metadata.annotations[ADOPT_ANNOTATION] = "uid-7"
    launcher = ScriptedLauncher()
    run = step(recreated, launcher)
    [name] = launcher.requests
    assert launcher.requests[name].config_uri.startswith(tmp_path.as_uri())  # the same storage, same save dir
    assert archive.is_committed(final)  # the trained checkpoint is untouched
    launcher.set(name, "Succeeded", 0)  # it found its final step committed and ended at once
    run = step(run, launcher, T0 + dt.timedelta(minutes=1))
    pretrain = run.status.phases["pretrain"]
    assert pretrain.state == "Succeeded" and pretrain.archive is not None
    assert (
        pretrain.archive.endswith("/archive/pretrain/step8")
        and archive.verify_checkpoint(pretrain.archive).ok
    )
