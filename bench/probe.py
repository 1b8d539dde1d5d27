"""The probe path, which the embedded default runs (strong_model=minilm_l6_probe): a frozen
backbone's pooled features, computed once per text set, and a linear head trained on them. The
three stages run in one fresh process as the pipeline runs them, features cached between stages,
every stage timed phase by phase (bench/stage_worker.py); the process's own start-up (imports,
config, data) is timed too."""

from __future__ import annotations

from pathlib import Path

from bench.common import spread
from bench.memory import STAGES, run_stages
from bench.modes import Settings

PHASES = ("setup", "features", "fit", "train_steps", "validation", "predict", "other", "total")


def phase_spreads(records: list[dict]) -> dict:
    result = {}
    for name in PHASES:
        entries = [r["phases"][name] for r in records if name in r["phases"]]
        if len(entries) != len(records):
            continue  # a phase that did not run (the student reads the features the ceiling cached)
        row = {"seconds": spread([e["seconds"] for e in entries])}
        if all(e["cpu_seconds"] is not None for e in entries):
            row["cpu_seconds"] = spread([e["cpu_seconds"] for e in entries])
        result[name] = row
    return result


def measure_probe(settings: Settings, workdir: Path, repeats: int, threads: int) -> dict:
    overrides = settings.probe_overrides()
    # A fresh folder per repeat: a cold stage cache, so every repeat computes the features once.
    runs = [run_stages(list(STAGES), workdir / f"probe{r}", threads, overrides) for r in range(repeats)]
    stages = {}
    for stage in STAGES:
        records = [run["stages"][stage] for run in runs]
        stages[stage] = {
            "model": records[0]["model"],
            "n_train": records[0]["n_train"],
            "seconds": spread([r["seconds"] for r in records]),
            "cpu_seconds": spread([r["cpu_seconds"] for r in records]),
            "phases": phase_spreads(records),
        }
    setups = [run["stages"][STAGES[0]]["process"] for run in runs]
    features = [sum(r["stages"][s]["phases"].get("features", {}).get("seconds", 0.0) for s in STAGES) for r in runs]
    return {
        "model": settings.probe_model,
        "weak_model": settings.probe_weak,
        "overrides": overrides,
        "repeats": repeats,
        "torch_threads": threads,
        "process": {
            "seconds": spread([run["seconds"] for run in runs]),
            "cpu_seconds": spread([run["cpu_seconds"] for run in runs]),
            "setup_seconds": spread([s["setup_seconds"] for s in setups]),
            "setup_cpu_seconds": spread([s["setup_cpu_seconds"] for s in setups]),
        },
        "stages": stages,
        # How much of the process's wall time the frozen backbone's passes take.
        "features_share": spread([f / run["seconds"] for f, run in zip(features, runs)]),
    }
