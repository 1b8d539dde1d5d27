"""Stages of a weak-to-strong experiment in a process of their own, so that their peak memory is
their own and their clocks start after imports. Feeds `stages.fit_predict` what
`experiment.Experiment` would, with a stage cache in the work folder as the pipeline has (a
probe's frozen features are computed once per text set and read back by later stages); the
student reads the weak labels an earlier `weak` stage wrote into the same folder. Every stage is
timed phase by phase, wall clock and CPU. Writes <stage>.json per stage.

    python -m bench.stage_worker {weak,ceiling,student}[,...] WORKDIR THREADS [OVERRIDE ...]
"""

from __future__ import annotations

import time

STARTED, STARTED_CPU = time.perf_counter(), time.process_time()  # imports count as the process's set-up

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import lightning as L  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from bench.common import Clock, compose_cfg, quiet  # noqa: E402
from w2s_lightning.cache import StageCache  # noqa: E402
from w2s_lightning.data.splits import make_splits  # noqa: E402
from w2s_lightning.losses import CrossEntropy  # noqa: E402
from w2s_lightning.stages import fit_predict  # noqa: E402


def stage_inputs(cfg, splits, stage: str, workdir: Path) -> dict:
    """The model, data, targets, loss and prediction sets that the pipeline gives `stage`."""
    a, b, val, test = splits.a, splits.b, splits.val, splits.test
    if stage == "weak":
        predict = {"b": b, "val": val}
        spec, train, targets, loss = cfg.weak_model, a, a["label"].to_numpy(float), CrossEntropy()
    elif stage == "ceiling":
        gt = a if cfg.ceiling_split == "a" else b
        spec, train, targets, loss, predict = cfg.strong_model, gt, gt["label"].to_numpy(float), CrossEntropy(), {}
    else:
        weak_probs = pd.read_parquet(workdir / "weak" / "b.parquet")["prob"].to_numpy()
        spec, train, targets, loss, predict = cfg.strong_model, b, weak_probs, instantiate(cfg.loss), {"val": val}
    slot = "weak_model" if stage == "weak" else "strong_model"
    return {
        "spec": spec,
        "slot": slot,
        "train": train,
        "targets": targets,
        "loss": loss,
        "predict": {**predict, "test": test},
    }


class PhaseClock(L.Callback):
    """Wall and CPU seconds of each Lightning phase of a stage: `features` (a linear probe's frozen
    encoder, a FeatureSystem predicting on a trainer of its own), `fit` (Trainer set-up to
    teardown, of which `train_steps` and `validation`), `predict` (the stage's predictions)."""

    def __init__(self):
        self.phases: dict[str, list[float]] = {}
        self.open: dict[str, Clock] = {}
        self.first_hook: float | None = None  # when Lightning first took over: the stage's set-up ends
        self.names: dict[str, str] = {}

    def begin(self, name: str) -> None:
        if self.first_hook is None:
            self.first_hook = time.perf_counter()
        self.open[name] = Clock().start()

    def end(self, name: str) -> None:
        wall, cpu = self.open.pop(name).read()
        total = self.phases.setdefault(name, [0.0, 0.0])
        total[0] += wall
        total[1] += cpu

    def setup(self, trainer, pl_module, stage):
        if stage == "predict":
            self.names[stage] = "features" if getattr(pl_module, "predict_features", False) else "predict"
        else:
            self.names[stage] = stage
        self.begin(self.names[stage])

    def teardown(self, trainer, pl_module, stage):
        self.end(self.names.pop(stage))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.begin("train_steps")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end("train_steps")

    def on_validation_start(self, trainer, pl_module):
        self.begin("validation")

    def on_validation_end(self, trainer, pl_module):
        self.end("validation")


def phase_table(clock: PhaseClock, start: float, wall: float, cpu: float) -> dict:
    """Seconds per phase; `setup` is the stage's own start (model, Trainer, tokenizer, the first
    tokenising) up to Lightning's first hook, `other` what no phase covers (later tokenising,
    writing predictions)."""
    table = {name: {"seconds": w, "cpu_seconds": c} for name, (w, c) in clock.phases.items()}
    top = ("features", "fit", "predict")
    setup = (clock.first_hook or time.perf_counter()) - start
    table["setup"] = {"seconds": setup, "cpu_seconds": None}
    covered = sum(table[name]["seconds"] for name in top if name in table)
    covered_cpu = sum(table[name]["cpu_seconds"] for name in top if name in table)
    table["other"] = {"seconds": wall - setup - covered, "cpu_seconds": None}
    table["total"] = {"seconds": wall, "cpu_seconds": cpu}
    # Set-up and the rest share the CPU time the Lightning phases leave.
    table["setup_and_other_cpu_seconds"] = cpu - covered_cpu
    return table


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Linux lets a process restart its resident high-water mark (clear_refs 5), so the peak
    read afterwards belongs to the stage alone, not to the imports and the data loading."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_stage(cfg, splits, stage: str, workdir: Path, cache: StageCache) -> dict:
    inputs = stage_inputs(cfg, splits, stage, workdir)
    stage_dir = workdir / stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    kib = 1024
    record = {"stage": stage, "model": inputs["spec"].name, "setup_peak_rss_bytes": status_kib("VmHWM") * kib}
    record["rss_before_bytes"] = status_kib("VmRSS") * kib
    record["peak_scope"] = "stage" if reset_peak_rss() else "process"
    phases = PhaseClock()
    clock = Clock().start()
    fit = fit_predict(
        cfg,
        stage=stage,
        val=splits.val,
        val_targets=splits.val["label"].to_numpy(float),
        workdir=stage_dir,
        loggers=[],
        cache=cache,
        callbacks=[phases],  # on the stage's trainer and on its features' own
        **inputs,
    )
    wall, cpu = clock.read()
    record.update(seconds=wall, cpu_seconds=cpu, n_train=fit["n_train"])
    record["phases"] = phase_table(phases, clock.wall, wall, cpu)
    # Not ru_maxrss: across fork and exec it keeps the parent's size, so a large parent would
    # hide every stage's own peak.
    record["peak_rss_bytes"] = status_kib("VmHWM") * kib
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        record["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
        record["cuda_peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return record


def main(argv: list[str]) -> None:
    stages, workdir, threads, overrides = argv[0].split(","), Path(argv[1]), int(argv[2]), argv[3:]
    quiet()
    torch.set_num_threads(threads)
    cfg = compose_cfg(overrides, workdir)
    splits = make_splits(instantiate(cfg.dataset.loader), cfg.dataset, cfg.seed)
    cache = StageCache(workdir / "cache", enabled=True)
    process = {
        "setup_seconds": time.perf_counter() - STARTED,
        "setup_cpu_seconds": time.process_time() - STARTED_CPU,
    }
    for stage in stages:
        record = run_stage(cfg, splits, stage, workdir, cache)
        (workdir / f"{stage}.json").write_text(json.dumps({**record, "process": process}))


if __name__ == "__main__":
    main(sys.argv[1:])
