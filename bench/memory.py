"""Peak memory per stage of one experiment, each stage in a fresh process (bench/stage_worker.py),
measured from the end of the process's imports and data loading to the end of the stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT, offline_env

STAGES = ("weak", "ceiling", "student")
MIB = 2**20


def run_stage(stage: str, workdir: Path, threads: int, overrides: list[str]) -> dict:
    cmd = [sys.executable, "-m", "bench.stage_worker", stage, str(workdir), str(threads), *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=offline_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"stage worker '{stage}' failed:\n{proc.stderr[-3000:]}")
    return json.loads((workdir / f"{stage}.json").read_text())


def measure_memory(overrides: list[str], workdir: Path, threads: int) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    result = {}
    for stage in STAGES:
        record = run_stage(stage, workdir, threads, overrides)
        row = {
            "model": record["model"],
            "n_train": record["n_train"],
            "seconds": record["seconds"],
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
