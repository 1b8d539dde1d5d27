"""The collector's walks spared in a process of our own (w2s_lightning/heap.py): nothing changes in
a process that only imports the package, imported objects are frozen once, and at exit the last
walk is skipped."""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys

import pandas as pd
import pytest

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


# Blocks of 8 MiB allocated, written and freed three times: the page faults of the last two rounds.
REUSE = """
import ctypes, resource, sys
from w2s_lightning import heap
if sys.argv[1] == "own":
    heap.own_process()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

def allocate_and_free(size=8 << 20, n=20):
    blocks = [libc.malloc(size) for _ in range(n)]
    for block in blocks:
        libc.memset(block, 1, size)
    for block in blocks:
        libc.free(block)

allocate_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
allocate_and_free()
allocate_and_free()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run(mode: str, script: str = SCRIPT, **env) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", script, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
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


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or "glibc" not in " ".join(platform.libc_ver()), reason="glibc"
)
def test_an_owned_process_reuses_the_memory_it_frees():
    """The 320 MiB of the last two rounds fault in again (80,000 pages) unless glibc keeps them."""
    [plain] = run("import", REUSE)
    [owned] = run("own", REUSE)
    assert int(plain) > 40_000 and int(owned) < 1_000
    [theirs] = run("own", REUSE, MALLOC_TRIM_THRESHOLD_="0")  # a user's own setting stands
    assert int(theirs) > 40_000
