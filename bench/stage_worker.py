"""One stage of a weak-to-strong experiment in a process of its own, so its peak memory is
its own. Feeds `stages.fit_predict` what `experiment.Experiment` would; the student reads the
weak labels an earlier `weak` worker wrote into the same work folder. Writes <stage>.json.

    python -m bench.stage_worker {weak,ceiling,student} WORKDIR THREADS [OVERRIDE ...]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from hydra.utils import instantiate

from bench.common import compose_cfg, quiet
from w2s_lightning.data.splits import make_splits
from w2s_lightning.losses import CrossEntropy
from w2s_lightning.stages import fit_predict


def stage_inputs(cfg, splits, stage: str, workdir: Path) -> dict:
    """The model, data, targets, loss and prediction sets that the pipeline gives `stage`."""
    a, b, test = splits.a, splits.b, splits.test
    if stage == "weak":
        spec, train, targets, loss, predict = cfg.weak_model, a, a["label"].to_numpy(float), CrossEntropy(), {"b": b}
    elif stage == "ceiling":
        gt = a if cfg.ceiling_split == "a" else b
        spec, train, targets, loss, predict = cfg.strong_model, gt, gt["label"].to_numpy(float), CrossEntropy(), {}
    else:
        weak_probs = pd.read_parquet(workdir / "weak" / "b.parquet")["prob"].to_numpy()
        spec, train, targets, loss, predict = cfg.strong_model, b, weak_probs, instantiate(cfg.loss), {}
    slot = "weak_model" if stage == "weak" else "strong_model"
    return {
        "spec": spec,
        "slot": slot,
        "train": train,
        "targets": targets,
        "loss": loss,
        "predict": {**predict, "test": test},
    }


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


def main(argv: list[str]) -> None:
    stage, workdir, threads, overrides = argv[0], Path(argv[1]), int(argv[2]), argv[3:]
    quiet()
    torch.set_num_threads(threads)
    cfg = compose_cfg(overrides, workdir)
    splits = make_splits(instantiate(cfg.dataset.loader), cfg.dataset, cfg.seed)
    inputs = stage_inputs(cfg, splits, stage, workdir)
    stage_dir = workdir / stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    kib = 1024
    record = {"stage": stage, "model": inputs["spec"].name, "setup_peak_rss_bytes": status_kib("VmHWM") * kib}
    record["rss_before_bytes"] = status_kib("VmRSS") * kib
    record["peak_scope"] = "stage" if reset_peak_rss() else "process"
    start = time.perf_counter()
    fit = fit_predict(
        cfg,
        stage=stage,
        val=splits.val,
        val_targets=splits.val["label"].to_numpy(float),
        workdir=stage_dir,
        loggers=[],
        **inputs,
    )
    record.update(seconds=time.perf_counter() - start, n_train=fit["n_train"])
    # Not ru_maxrss: across fork and exec it keeps the parent's size, so a large parent would
    # hide every stage's own peak.
    record["peak_rss_bytes"] = status_kib("VmHWM") * kib
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        record["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
        record["cuda_peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    (workdir / f"{stage}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1:])
