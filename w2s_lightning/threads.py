"""How many torch threads each piece of a stage runs on (the `threads` knob).

Small work (a linear head on cached features, a model of a few million parameters) runs
matrix products too small to split well, and on a shared machine two threads of one process
stall each other: the embedded default's weak fit took 4-5 s on one thread and 15-95 s on two
while other processes used the 2 cores. The price on free cores: two threads ran its training
steps 1.5x faster. Large work (a frozen backbone's feature extraction, a big model) splits well
(MiniLM's features 2x faster on two free cores) and gets every core this process may use.

`threads: auto` applies that rule; an integer forces a count for every piece of work. The
cores a process may use are the fewest of: its CPU affinity, its cgroup CPU quota,
`OMP_NUM_THREADS` when set (Hydra's joblib launcher sets it to cores // n_jobs in each worker,
Ray to the job's num_cpus, Lightning's DDP launcher to cores // processes), and the thread
count torch had when the outermost `use_threads` was entered (torch's default is the physical
cores; a program embedding the pipeline may have lowered it)."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SMALL, LARGE = "small", "large"
AUTO = "auto"
# Catalogue sizes below this train and predict on one thread under `auto`. The from-scratch
# weak models (1-5M parameters, most of them an embedding table) sit below it; MiniLM-L6
# (22.7M) and every pretrained hub model above it.
SMALL_PARAMS = 1.0e7
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))

# Set by the outermost `use_threads`, read by nested ones; one per Python thread, as torch's
# thread count is (a background thread computes features beside a stage: prefetch.py).
_local = threading.local()


def sleep_when_idle(env=os.environ) -> None:
    """Make OpenMP threads that wait at the end of a parallel region sleep instead of spin, unless
    the user chose otherwise. Spinning only pays on cores nobody else wants: with other processes
    on the 2 cores, MiniLM's features took 27-29 s on two spinning threads and 11 s on two sleeping
    ones; the fastest of 30 feature batches was the same either way (393 vs 402 ms). OpenMP reads
    it once, when torch loads it, so this must run before torch is imported (config.setup does)."""
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def work_of(spec) -> str:
    """What training or predicting with catalogue entry `spec` costs: a linear probe trains and
    predicts with its head alone (the backbone's features are extracted separately, as LARGE)."""
    return SMALL if spec.linear_probe or float(spec.size) < SMALL_PARAMS else LARGE


def cgroup_cpus(v2: Path = CGROUP_V2, v1: tuple[Path, Path] = CGROUP_V1) -> int | None:
    """CPUs this container may use by its CFS quota, rounded up; None when unlimited or unknown."""
    try:
        quota, period = v2.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota, period = (p.read_text().strip() for p in v1)
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def affinity_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def env_threads(env=os.environ) -> int | None:
    try:
        value = int(env.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return value if value >= 1 else None


def budget(affinity: int, quota: int | None, omp: int | None, current: int | None) -> int:
    """The cores this process may use: the fewest that any of the limits allows."""
    return max(1, min(x for x in (affinity, quota, omp, current) if x is not None))


def process_cores() -> int:
    """The cores this thread's work may use now: the tightest of the limits above."""
    import torch

    return budget(affinity_cpus(), cgroup_cpus(), env_threads(), torch.get_num_threads())


def choose(setting, work: str, cores: int) -> int:
    """Threads for `work` (SMALL or LARGE) under `setting` (`auto` or an integer >= 1), given the
    process's `cores`."""
    if setting == AUTO:
        if work not in (SMALL, LARGE):
            raise ValueError(f"work '{work}' is neither '{SMALL}' nor '{LARGE}'")
        return 1 if work == SMALL else cores
    if isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1:
        return setting
    raise ValueError(f"threads={setting!r}: must be auto or an integer >= 1")


@contextmanager
def use_threads(setting, work: str) -> Iterator[int]:
    """Run the block on `choose(setting, work, ...)` torch threads, then restore the count found."""
    import torch

    previous = torch.get_num_threads()
    outermost = getattr(_local, "budget", None) is None
    if outermost:
        _local.budget = process_cores()
    try:
        count = choose(setting, work, _local.budget)
        if count != previous:
            torch.set_num_threads(count)
        yield count
    finally:
        # Also when the block changed it (Lightning's DDP launcher sets its own count).
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
        if outermost:
            _local.budget = None
