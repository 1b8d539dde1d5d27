"""Trainings and wall time of one sweep under each Hydra launcher: the same 2 weak × 2 strong grid of
tiny models, each launcher on a fresh stage cache, the trainings counted from the jobs' results.json
and checked against the cache's entries.

    python bench/launchers.py                                   # joblib and Ray, 2 workers each
    python bench/launchers.py --launchers basic,joblib,ray_local,submitit_local --out /tmp/launchers.json

See bench/README.md ("Launchers")."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, load_average, offline_env, spread
from bench.modes import TINY_DATA
from bench.sweep import STAGES, count_trainings

WEAK, STRONG = ["tiny_bert", "tiny_gpt2"], ["tiny_gpt2", "tiny_pythia"]
GRID = [
    f"weak_model={','.join(WEAK)}",
    f"strong_model={','.join(STRONG)}",
    "pairs.require_larger_strong=false",  # keeps the self-pair: each weak model and each ceiling serves two jobs
    "seed=0",
    "loss=xent",
    "logger=none",
    *TINY_DATA,
]


def stop(proc: subprocess.Popen) -> None:
    """End a process started in its own session and everything it started (Ray's processes,
    submitit's jobs). A group with no process left is gone, so a finished run leaves nothing to signal."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)


def run_in_session(cmd: list[str], cwd: Path, env: dict, log_file: Path, timeout: float) -> tuple[int | None, int]:
    """Run `cmd` in its own session with its output in `log_file`, so that Ray's processes or
    submitit's jobs end with it on a failure: its exit status (None if it timed out) and its pid."""
    with log_file.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            stop(proc)
    return rc, proc.pid


def launcher_overrides(name: str, workers: int) -> list[str]:
    """How each launcher is asked for `workers` jobs at once (submitit's local executor has no such
    knob: it starts every job at once)."""
    return {
        "basic": [],  # Hydra's default: one job after another in the sweep's own process
        "joblib": ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={workers}"],
        "ray_local": ["hydra/launcher=ray_local", f"hydra.launcher.ray.init.num_cpus={workers}"],
        "submitit_local": ["hydra/launcher=submitit_local"],
    }[name]


def run_grid(launcher: str, workers: int, root: Path, threads: int, timeout: float) -> tuple[float, list[dict], dict]:
    """One sweep of the grid on an empty cache under `root`: its wall time, its jobs' results and the
    cache entries it left per stage."""
    sweep = root / "sweep"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *launcher_overrides(launcher, workers), *GRID,
           f"paths.root_dir={root}", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    # Every launcher's jobs get the same torch threads (Ray would set 1 per job itself).
    env = {**offline_env(), "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    log_file = root / "sweep.log"
    start = time.perf_counter()
    rc, _ = run_in_session(cmd, root, env, log_file, timeout)
    seconds = time.perf_counter() - start
    if rc != 0:
        raise RuntimeError(f"{launcher} sweep {'timed out' if rc is None else f'exited {rc}'} ({' '.join(cmd)}):\n"
                           f"{log_file.read_text()[-3000:]}")  # fmt: skip
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    cache = root / ".cache" / "stages"
    entries = {stage: len(list((cache / stage).glob("*/record.json"))) for stage in STAGES}
    return seconds, results, entries


def measure(launcher: str, workers: int, repeats: int, workdir: Path, threads: int, timeout: float) -> dict:
    walls, counts, all_entries = [], [], []
    for r in range(repeats):
        root = workdir / f"{launcher}-{r}"
        root.mkdir(parents=True)
        seconds, results, entries = run_grid(launcher, workers, root, threads, timeout)
        walls.append(seconds)
        counts.append(count_trainings(results))
        all_entries.append(entries)
    counts_agree = all(c == counts[0] for c in counts) and all(e == all_entries[0] for e in all_entries)
    return {
        "overrides": launcher_overrides(launcher, workers),
        "wall_seconds": spread(walls),
        **counts[-1],  # the same every repeat when the cache works; counts_agree says whether they were
        "cache_entries": all_entries[-1],
        # A stage two jobs both trained would show as a training more than there are entries.
        "each_stage_trained_once": counts[-1]["trained"] == all_entries[-1],
        "counts_agree_across_repeats": counts_agree,
    }


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--launchers", default="joblib,ray_local", help="comma list of basic, joblib, ray_local, submitit_local"
    )
    p.add_argument("--workers", type=int, default=2, help="jobs at once for joblib and Ray")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per job")
    p.add_argument("--timeout", type=float, default=900, help="seconds one sweep may take")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    launchers = args.launchers.split(",")
    unknown = set(launchers) - {"basic", "joblib", "ray_local", "submitit_local"}
    if unknown:
        p.error(f"unknown launchers {sorted(unknown)}")

    n, m = len(WEAK), len(STRONG)
    out = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/launchers.py", *(argv if argv is not None else sys.argv[1:])]),
        "grid": GRID,
        "cpu_count": os.cpu_count(),
        "torch_threads_per_job": args.threads,
        "versions": {
            "python": platform.python_version(),
            **{d: version(d) for d in ("hydra-core", "ray", "hydra-ray-launcher", "joblib", "submitit", "torch")},
        },
        "load_average_start": load_average(),
        # What a sweep without the cache would train, and the least any sweep can: both by construction.
        "without_cache": 3 * n * m,
        "minimum": n + m + n * m,
        "launchers": {},
    }
    with tempfile.TemporaryDirectory(prefix="w2s-launchers-") as tmp:
        for launcher in launchers:
            out["launchers"][launcher] = measure(
                launcher, args.workers, args.repeats, Path(tmp), args.threads, args.timeout
            )
            row = out["launchers"][launcher]
            print(f"{launcher:15s} trainings {row['trainings']:2d} {row['trained']}  reused {row['reused']:2d}  "
                  f"wall {row['wall_seconds']['median']:6.1f} s  once each: {row['each_stage_trained_once']}",
                  flush=True)  # fmt: skip
    out["load_average_end"] = load_average()
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
