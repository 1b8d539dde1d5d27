"""Whether torch.compile pays for itself: one stage in a fresh process, with and without
`strong_model.compile=true`, start-up and compilation counted in its time. Two workloads: the
probe path of the embedded default (the frozen MiniLM's features of B, validation and test, then
the head) and a full finetuning (the strong model under test on `compile_data`). The compiled
stage runs twice: first with inductor's cache empty (a fresh `TORCHINDUCTOR_CACHE_DIR`), as a
first run sees it, then with that cache filled, as a sweep's later jobs on one machine see it.
Dynamo still traces the model in every process; only inductor's code generation is cached."""

from __future__ import annotations

from pathlib import Path

from bench.common import spread
from bench.memory import run_stages
from bench.modes import Settings

STAGE = "ceiling"  # the strong model on ground truth: a stage of the workload's own
VARIANTS = ("eager", "compiled_cold_cache", "compiled_warm_cache")
PHASES = ("features", "train_steps", "fit", "predict")  # what the compiled backbone runs


def workload(overrides: list[str], workdir: Path, repeats: int, threads: int) -> dict:
    """Each variant's stage `repeats` times, each repeat with a cold stage cache."""
    inductor = workdir / "inductor"
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for r in range(repeats):
        cache = inductor / f"repeat{r}"  # empty for this repeat's first compiled run
        for name in VARIANTS:
            compiled = [] if name == "eager" else ["strong_model.compile=true"]
            env = {} if name == "eager" else {"TORCHINDUCTOR_CACHE_DIR": str(cache)}
            run = run_stages([STAGE], workdir / f"{name}{r}", threads, [*overrides, *compiled], env)
            record = run["stages"][STAGE]
            runs[name].append({"process": run, "stage": record})
    result = {}
    for name, records in runs.items():
        stages = [r["stage"] for r in records]
        row = {
            "process_seconds": spread([r["process"]["seconds"] for r in records]),
            "process_cpu_seconds": spread([r["process"]["cpu_seconds"] for r in records]),
            "stage_seconds": spread([s["seconds"] for s in stages]),
            "stage_cpu_seconds": spread([s["cpu_seconds"] for s in stages]),
        }
        for phase in PHASES:
            if all(phase in s["phases"] for s in stages):
                row[f"{phase}_seconds"] = spread([s["phases"][phase]["seconds"] for s in stages])
        result[name] = row
    eager = result["eager"]["process_seconds"]["median"]
    for name in VARIANTS[1:]:
        # Above 1: the compiled run, compilation and all, took longer than the eager one.
        result[name]["time_vs_eager"] = result[name]["process_seconds"]["median"] / eager
    first = runs["eager"][0]["stage"]
    return {"model": first["model"], "n_train": first["n_train"], "overrides": overrides, **result}


def measure_compile(settings: Settings, workdir: Path, repeats: int, threads: int) -> dict:
    return {
        "threads": threads,
        "repeats": repeats,
        "probe": workload(settings.probe_overrides(), workdir / "probe", repeats, threads),
        "finetune": workload(settings.compile_overrides(), workdir / "finetune", repeats, threads),
    }
