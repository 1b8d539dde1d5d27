"""Peak memory per stage of one experiment, each stage in a fresh process (bench/stage_worker.py),
measured from the end of the process's imports and data loading to the end of the stage; with
each stage's time, phase by phase."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import ROOT, offline_env, run_timed

STAGES = ("weak", "ceiling", "student")
MIB = 2**20


def run_stages(stages: list[str], workdir: Path, threads: int, overrides: list[str], env: dict | None = None) -> dict:
    """Run `stages` in order in one worker process (with `env` added to its environment):
    ({stage: record}, process wall s, process CPU s)."""
    cmd = [sys.executable, "-m", "bench.stage_worker", ",".join(stages), str(workdir), str(threads), *overrides]
    proc, wall, cpu = run_timed(cmd, cwd=ROOT, env={**offline_env(), **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"stage worker {stages} failed:\n{proc.stderr[-3000:]}")
    records = {stage: json.loads((workdir / f"{stage}.json").read_text()) for stage in stages}
    return {"stages": records, "seconds": wall, "cpu_seconds": cpu}


def phase_seconds(record: dict) -> dict:
    return {name: round(entry["seconds"], 3) for name, entry in record["phases"].items() if isinstance(entry, dict)}


def measure_memory(overrides: list[str], workdir: Path, threads: int) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    result = {}
    for stage in STAGES:
        run = run_stages([stage], workdir, threads, overrides)
        record = run["stages"][stage]
        row = {
            "model": record["model"],
            "n_train": record["n_train"],
            "seconds": record["seconds"],
            "cpu_seconds": record["cpu_seconds"],
            "phases": phase_seconds(record),
            "process_seconds": run["seconds"],
            "process_cpu_seconds": run["cpu_seconds"],
            # `stage` when the high-water mark could be restarted before the stage, else the whole process.
            "peak_scope": record["peak_scope"],
            "setup_peak_rss_mib": record["setup_peak_rss_bytes"] / MIB,
            "rss_before_mib": record["rss_before_bytes"] / MIB,
            "peak_rss_mib": record["peak_rss_bytes"] / MIB,
            "peak_above_start_mib": (record["peak_rss_bytes"] - record["rss_before_bytes"]) / MIB,
        }
        if "cuda_peak_allocated_bytes" in record:
            row["cuda_peak_allocated_mib"] = record["cuda_peak_allocated_bytes"] / MIB
            row["cuda_peak_reserved_mib"] = record["cuda_peak_reserved_bytes"] / MIB
        result[stage] = row
    return {"stages": result}
