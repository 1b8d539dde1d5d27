"""The collector's walks spared in a process of our own (w2s_lightning/heap.py): nothing changes in
a process that only imports the package, imported objects are frozen once, and at exit the last
walk is skipped."""

from __future__ import annotations

import gc
import subprocess
import sys

from w2s_lightning import heap

from .helpers import ROOT

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
