"""The collector's walks spared in a process of our own (w2s_lightning/heap.py): nothing changes in
a process that only imports the package, imported objects are frozen once, and at exit the last
walk is skipped."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pandas as pd

from w2s_lightning import heap

from .helpers import ROOT, TINY
from .test_loggers import wandb_run

# A cycle with a finaliser, dropped before exit: only a collection at exit would finalise it.
SCRIPT = """
import gc, sys
from w2s_lightning import heap
if sys.argv[1] == "own":
    heap.own_process()
heap.freeze_imports()
first = gc.get_freeze_count()
later = [[i] for i in range(1000)]  # objects created after the freeze, as a stage's are
heap.freeze_imports()
print(first, gc.get_freeze_count(), flush=True)

class Cycle:
    def __del__(self):
        print("finalised at exit", flush=True)

garbage = Cycle()
garbage.me = garbage
del garbage
"""


def run(mode: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True, check=True)
    return proc.stdout.splitlines()


def test_a_process_that_only_imports_the_package_is_left_alone():
    before = gc.get_freeze_count()
    heap.freeze_imports()
    assert gc.get_freeze_count() == before
    counts, finalised = run("import")
    assert counts == "0 0" and finalised == "finalised at exit"


def test_an_owned_process_freezes_its_imports_once_and_skips_the_walk_at_exit():
    [counts] = run("own")  # no "finalised at exit": the collection at exit did not walk the cycle
    first, second = map(int, counts.split())
    assert first > 1000 and second == first  # the second call froze nothing of what came later


def test_train_py_in_its_own_process_still_finishes_its_dashboard_runs_and_logs(tmp_path):
    """Skipping the last walk must not cost what other exit handlers write: W&B's offline runs
    end with their exit record and the CSV logs hold their final rows."""
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY, "logger=default", f"paths.root_dir={tmp_path}"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=True, timeout=300)
    [out] = [p.parent for p in (tmp_path / "outputs" / "runs").rglob("results.json")]
    runs = [wandb_run(folder) for folder in (out / "wandb").glob("offline-run-*")]
    assert sorted(run["job_type"] for run in runs) == ["ceiling", "metrics", "student", "weak"]
    assert all(run["exit_code"] == 0 for run in runs)
    student, final = (pd.read_csv(out / "csv" / name / "metrics.csv") for name in ("student", "metrics"))
    assert student["student/val/acc"].notna().any()  # the epoch's last row, written at its end
    assert final["student/test/acc"].notna().any()  # the metrics run, written last of all
