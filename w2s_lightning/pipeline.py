"""One weak-to-strong experiment, top to bottom:

    strong start -> weak labels -> refined labels -> strong ceiling -> strong student -> metrics

Each step is an option of a config group (`pretrain`, `labels`, `refine`, `select`; see
`w2s_lightning/methods/`); the defaults are the paper's plain setting: one weak supervisor
trained on A labels B, the strong student trains on those labels from pretrained weights, and
the last checkpoint counts. Every stage is cached under a hash of the config that determines
it and of the data it reads, so a sweep, a rerun after a crash and a parallel job all find
finished work instead of redoing it, and no cached result is ever paired with other data."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from w2s_lightning import console, distributed
from w2s_lightning.cache import StageResult
from w2s_lightning.checks import check_config
from w2s_lightning.config import flat_config
from w2s_lightning.data.splits import make_splits
from w2s_lightning.errors import ConfigError, W2SError
from w2s_lightning.experiment import Experiment, Labels, plain
from w2s_lightning.losses import CrossEntropy
from w2s_lightning.measure import measure
from w2s_lightning.methods import Start, method_label, uses_ground_truth
from w2s_lightning.models import convert
from w2s_lightning.prefetch import prefetch_features
from w2s_lightning.replay import data_digests, keeps_record, remember

log = logging.getLogger(__name__)


def pair_skip_reason(cfg: DictConfig) -> str | None:
    weak, strong = cfg.weak_model, cfg.strong_model
    if cfg.pairs.require_larger_strong and not strong.size > weak.size:
        return (
            f"strong model {strong.name} ({strong.size:.3g} params) is not larger than weak model "
            f"{weak.name} ({weak.size:.3g}); set pairs.require_larger_strong=false to run it"
        )
    return None


def run(cfg: DictConfig) -> float | None:
    """Run one experiment; return the score a sweeper may optimise: the student's accuracy on
    validation labelled by the weak supervisor (None when skipped, which a sweeper reads as a
    failed trial; Optuna's study would stop on a NaN). A run that fails leaves results.json
    with status "failed", the stage and the error, and raises again. PGR is in results.json,
    never the return value: tuning on it would tune on the test set."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    student_loss = instantiate(cfg.loss)
    results = {
        "weak_model": cfg.weak_model.name,
        "strong_model": cfg.strong_model.name,
        "weak_size": cfg.weak_model.size,
        "strong_size": cfg.strong_model.size,
        "loss": student_loss.label,
        "loss_name": student_loss.name,
        "dataset": cfg.dataset.name,
        "seed": cfg.seed,
        "name": cfg.name,
        "config": flat_config(cfg),
    }
    try:
        check_config(cfg)
        methods = build_methods(cfg)
        results.update(method=method_label(methods), oracle=uses_ground_truth(methods))
        if reason := pair_skip_reason(cfg):
            log.warning("skipping pair: %s", reason)
            write_results(out_dir, {**results, "status": "skipped", "reason": reason})
            return None
        # A job killed from here on leaves "running": the sweep report lists it as unfinished.
        write_results(out_dir, {**results, "status": "running"})
        # Hashed before the loader reads them, so a file edited mid-run is not vouched for; only
        # where a run record will keep them (a large local file costs a full read).
        data_files = data_digests(cfg) if keeps_record(cfg) else None
        with convert.into(Path(cfg.paths.cache_dir)):  # a GGUF or ONNX source converts into this run's cache
            scores, sources = experiment(cfg, out_dir, student_loss, methods)
        results.update(scores)
    except Exception as error:
        # Bugs too: a sweep's report must list the job as failed, not as running.
        stage = getattr(error, "stage", "config" if isinstance(error, ConfigError) else "data")
        message = str(error) if isinstance(error, W2SError) else f"{type(error).__name__}: {error}"
        write_results(out_dir, {**results, "status": "failed", "failed_stage": stage, "error": message})
        raise
    write_results(out_dir, results)
    remember(cfg, out_dir, sources, data_files)  # a rerun of this config answers from it without torch
    log.info("%s", console.scores(results))
    return results["student"]["val_weak_acc"]


def build_methods(cfg: DictConfig) -> dict:
    """The four method steps. `_partial_`, then the call: a method's own ConfigError reaches the
    user unwrapped by instantiate."""
    return {group: instantiate(cfg[group], _partial_=True)() for group in ("pretrain", "labels", "refine", "select")}


def experiment(cfg: DictConfig, out_dir: Path, student_loss, methods: dict) -> tuple[dict, list[StageResult]]:
    """The recipe; returns what results.json adds to the run's identity, and the cache entries
    its numbers were read from (for the run record, `replay.remember`)."""
    # `_partial_` so that a loader's own error reaches the user unwrapped by instantiate.
    splits = make_splits(instantiate(cfg.dataset.loader, _partial_=True)(), cfg.dataset, cfg.seed)
    if distributed.is_leader():
        splits.save(out_dir / "splits.json")
    exp = Experiment(cfg, splits, out_dir, student_loss.label)
    exp.tags += [f"method:{method_label(methods)}"] + (["oracle"] if uses_ground_truth(methods) else [])

    start = methods["pretrain"](exp)  # the strong model's starting point
    with prefetch_features(exp, start):  # a probe's features, computed on cores the weak stage leaves idle
        weak = methods["labels"](exp)  # soft labels for B and validation, and the weak side of PGR
        labels = methods["refine"](exp, weak, start)  # relabelled or filtered by the strong model's view
        ceiling = train_ceiling(exp, start)
        student = train_student(exp, start, labels, student_loss, methods["select"])
    scores = measure(exp, methods, start, weak, labels, ceiling, student)
    return scores, [*start.stages, *weak.stages, *labels.stages, ceiling, student]


def train_ceiling(exp: Experiment, start: Start) -> StageResult:
    """The strong model on ground truth: split B by default (the student's inputs, true labels)."""
    split = exp.cfg.ceiling_split
    return exp.stage(
        "ceiling",
        start.spec,
        "strong_model",
        exp.unlabelled(split),
        exp.labelled(split),
        CrossEntropy(),
        exp.labelled("val"),
        {"test": exp.unlabelled("test")},
        key_extra={"ceiling_split": split, "start": start.key},
        reads=(split, "val", "test"),
    )


def train_student(exp: Experiment, start: Start, labels: Labels, loss, select) -> StageResult:
    """The strong model on B's (kept) labels with the configured loss; `student.lr` and
    `student.epochs` may differ from the ceiling's (openai/weak-to-strong's transfer_lr/epochs)."""
    cfg = exp.cfg
    keep = labels.b["keep"].to_numpy() if "keep" in labels.b else slice(None)
    spec = start.spec if cfg.student.lr is None else OmegaConf.merge(start.spec, {"lr": cfg.student.lr})
    targets = labels.b["prob"].to_numpy()[keep]
    loss.prepare(targets)  # losses with a statistic of the whole training set (window's midweak radius)
    return exp.stage(
        "student",
        spec,
        "strong_model",
        exp.unlabelled("b")[keep],
        targets,
        loss,
        select.val_targets(exp, labels),
        {"val": exp.unlabelled("val"), "test": exp.unlabelled("test")},
        key_extra={"loss": plain(cfg.loss), "labels": labels.key, "start": start.key},
        reads=("b", "val", "test"),
        epochs=cfg.student.epochs,
        select=select,
    )


def strict(value):
    """NaN and infinities become null: results.json stays valid strict JSON."""
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(out_dir: Path, results: dict) -> None:
    if not distributed.is_leader():  # every rank runs the recipe; rank 0 alone writes the run's files
        return
    tmp = out_dir / "results.json.tmp"
    tmp.write_text(json.dumps(strict(results), indent=2, allow_nan=False))
    shutil.move(tmp, out_dir / "results.json")
