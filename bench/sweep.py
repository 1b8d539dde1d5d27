"""What the stage cache saves a sweep: `python train.py -m ...` run cold, then again on the
same cache, with the trainings counted from each run's results.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import ROOT, offline_env, run_timed, spread
from bench.modes import Settings

STAGES = ("weak", "ceiling", "student")


def run_sweep(overrides: list[str], root: Path, name: str, threads: int) -> tuple[float, float, list[dict]]:
    sweep_dir = root / name
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        *overrides,
        f"paths.root_dir={root}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    # torch sizes its thread pool from OMP_NUM_THREADS, so the sweep runs with the benchmark's threads.
    env = {**offline_env(), "OMP_NUM_THREADS": str(threads)}
    proc, seconds, cpu = run_timed(cmd, cwd=root, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return seconds, cpu, [json.loads(p.read_text()) for p in sorted(sweep_dir.rglob("results.json"))]


def count_trainings(results: list[dict]) -> dict:
    done = [r for r in results if r["status"] == "done"]
    trained = {stage: sum(not r[stage]["cached"] for r in done) for stage in STAGES}
    return {
        "experiments": len(results),
        "done": len(done),
        "trained": trained,
        "trainings": sum(trained.values()),
        "reused": sum(r[stage]["cached"] for r in done for stage in STAGES),
    }


def reference_counts(settings: Settings) -> dict:
    n, m, losses = len(settings.sweep_weak), len(settings.sweep_strong), len(settings.sweep_losses)
    return {
        # cache.enabled=false: every experiment trains its own three stages.
        "no_cache": 3 * n * m * losses,
        # A sweep that shares weak and ceiling within a pair but nothing across pairs.
        "per_pair": n * m * (2 + losses),
        # The least any sweep can do: each weak model once, each ceiling once, each student once.
        "minimum": n + m + n * m * losses,
    }


def measure_sweep(settings: Settings, workdir: Path, repeats: int, threads: int) -> dict:
    overrides = settings.sweep_overrides()
    walls = {"cold": [], "warm": []}
    cpus = {"cold": [], "warm": []}
    counts = {"cold": [], "warm": []}
    for r in range(repeats):
        root = workdir / f"sweep{r}"
        root.mkdir(parents=True)
        for kind in ("cold", "warm"):
            seconds, cpu, results = run_sweep(overrides, root, kind, threads)
            walls[kind].append(seconds)
            cpus[kind].append(cpu)
            counts[kind].append(count_trainings(results))
    return {
        "command": f"python train.py -m {' '.join(overrides)} paths.root_dir=<tmp>",
        "axes": {"weak": settings.sweep_weak, "strong": settings.sweep_strong, "losses": settings.sweep_losses},
        "repeats": repeats,
        "torch_threads": threads,
        "wall_seconds": {kind: spread(values) for kind, values in walls.items()},
        # User + system time of the sweep process and its children.
        "cpu_seconds": {kind: spread(values) for kind, values in cpus.items()},
        # Counts are the same every repeat when the cache works; the last repeat's stand for all.
        "cold": counts["cold"][-1],
        "warm": counts["warm"][-1],
        "counts_agree_across_repeats": all(c == counts[k][0] for k in counts for c in counts[k]),
        "without_cache": reference_counts(settings),
    }
