"""One weak-to-strong experiment, top to bottom:

    weak supervisor -> weak labels -> strong ceiling -> strong student -> metrics

Every stage is cached under a hash of the config that determines it and of the data it reads,
so a sweep, a rerun after a crash and a parallel job all find finished work instead of redoing
it, and no cached result is ever paired with other data."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from w2s_lightning.cache import StageCache, StageResult, stage_key
from w2s_lightning.checks import check_config
from w2s_lightning.config import flat_config
from w2s_lightning.data.splits import SPLIT_NAMES, Splits, aligned, make_splits
from w2s_lightning.errors import ConfigError, W2SError
from w2s_lightning.loggers import close, log_summary, record_cached, stage_loggers
from w2s_lightning.losses import CrossEntropy
from w2s_lightning.metrics import agreement, binary_metrics, pgr
from w2s_lightning.stages import fit_predict

log = logging.getLogger(__name__)

# Trainer knobs that change how a run is watched, not what it computes.
RUNTIME_ONLY_TRAINER_KEYS = {
    "enable_progress_bar",
    "enable_model_summary",
    "log_every_n_steps",
    "logger",
    "default_root_dir",
    "enable_checkpointing",
    "callbacks",
}


# Keys that say where data is read from or describe a model, not what a stage computes: the
# data itself is in every key as a fingerprint of the examples, so a moved or copied file keeps
# its cache entries and an edited one misses them.
NOT_IN_KEYS = {"local_path", "path", "test_path", "notes"}


def plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def key_view(node) -> dict:
    """The resolved config without the keys in NOT_IN_KEYS, at any depth."""

    def drop(value):
        if isinstance(value, dict):
            return {k: drop(v) for k, v in value.items() if k not in NOT_IN_KEYS}
        return value

    return drop(plain(node))


def pair_skip_reason(cfg: DictConfig) -> str | None:
    weak, strong = cfg.weak_model, cfg.strong_model
    if cfg.pairs.require_larger_strong and not strong.size > weak.size:
        return (
            f"strong model {strong.name} ({strong.size:.3g} params) is not larger than weak model "
            f"{weak.name} ({weak.size:.3g}); set pairs.require_larger_strong=false to run it"
        )
    return None


class Experiment:
    """The shared inputs of every stage: config, splits, cache, and the key parts."""

    def __init__(self, cfg: DictConfig, splits: Splits, out_dir: Path, loss_label: str):
        self.cfg, self.splits, self.out_dir = cfg, splits, out_dir
        enabled = cfg.cache.enabled
        self.cache = StageCache(
            cfg.paths.cache_dir if enabled else out_dir / "stages", enabled, cfg.cache.force_retrain
        )
        trainer = {k: v for k, v in plain(cfg.trainer).items() if k not in RUNTIME_ONLY_TRAINER_KEYS}
        self.common = {
            "dataset": key_view(cfg.dataset),
            "seed": cfg.seed,
            "train": plain(cfg.train),
            "optimizer": plain(cfg.optimizer),
            "trainer": trainer,
        }
        self.tags = [
            f"weak:{cfg.weak_model.name}",
            f"strong:{cfg.strong_model.name}",
            f"loss:{loss_label}",
            f"seed:{cfg.seed}",
            f"dataset:{cfg.dataset.name}",
        ]

    def loggers(self, stage: str) -> list:
        return stage_loggers(self.cfg, stage, self.tags)

    def stage(
        self, stage: str, slot: str, reads: tuple[str, ...], key_extra: dict, train, targets, loss, predict
    ) -> StageResult:
        """Fit the model of config slot `slot` on (`train`, `targets`) and predict `predict`, or
        read it from the cache. The key holds the stage's config slice and a fingerprint of the
        splits it `reads`, so other data never meets this stage's cached results."""
        spec = self.cfg[slot]
        payload = {
            **self.common,
            "model": key_view(spec),
            "data": self.splits.fingerprints(*reads),
            "predicts": sorted(predict),
            **key_extra,
        }
        key = stage_key(stage, payload)

        def compute(workdir: Path) -> dict:
            # Only reached when no finished copy exists, also after waiting for another job's lock.
            log.info("stage %s: training %s on %d examples (key %s)", stage, spec.name, len(train), key)
            loggers = self.loggers(stage)
            try:
                record = fit_predict(
                    self.cfg,
                    spec,
                    slot,
                    stage,
                    train,
                    targets,
                    loss,
                    self.splits.val,
                    predict,
                    workdir,
                    loggers,
                    self.cache,
                )
                log_summary(loggers, {f"{stage}/test/{k}": v for k, v in record["test"].items()})
            finally:
                close(loggers)
            return record

        try:
            result = self.cache.run(stage, key, compute)
        except Exception as error:
            error.stage = stage  # results.json names the stage that failed
            raise
        if result.cached:
            log.info("stage %s: reusing %s from the cache (%s)", stage, spec.name, result.path)
            record_cached(
                self.cfg, stage, self.tags, {f"{stage}/test/{k}": v for k, v in result.record["test"].items()}
            )
        return result

    def predictions(self, result: StageResult, split: str) -> pd.DataFrame:
        """A stage's stored predictions on `split`, joined to the split's examples by id."""
        stored = pd.read_parquet(result.path / f"{split}.parquet")
        return aligned(stored, getattr(self.splits, split), f"stage {result.record['stage']}, split {split}")


def run(cfg: DictConfig) -> float:
    """Run one experiment; return the score a sweeper may optimise: the student's accuracy on
    validation labelled by the weak supervisor (NaN when skipped, which a sweeper reads as a
    failed trial). A run that fails leaves results.json with status "failed", the stage and the
    error, and raises again. PGR is in results.json, never the return value: tuning on it would
    tune on the test set."""
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
        if reason := pair_skip_reason(cfg):
            log.warning("skipping pair: %s", reason)
            write_results(out_dir, {**results, "status": "skipped", "reason": reason})
            return math.nan
        # A job killed from here on leaves "running": the sweep report lists it as unfinished.
        write_results(out_dir, {**results, "status": "running"})
        results.update(experiment(cfg, out_dir, student_loss))
    except Exception as error:
        # Bugs too: a sweep's report must list the job as failed, not as running.
        stage = getattr(error, "stage", "config" if isinstance(error, ConfigError) else "data")
        message = str(error) if isinstance(error, W2SError) else f"{type(error).__name__}: {error}"
        write_results(out_dir, {**results, "status": "failed", "failed_stage": stage, "error": message})
        raise
    write_results(out_dir, results)
    log.info(
        "weak %.3f | student %.3f | ceiling %.3f | PGR %s",
        results["weak"]["acc"],
        results["student"]["acc"],
        results["ceiling"]["acc"],
        "undefined" if results["pgr"] is None else f"{results['pgr']:.3f}",
    )
    return results["student"]["val_weak_acc"]


def experiment(cfg: DictConfig, out_dir: Path, student_loss) -> dict:
    """The stages, top to bottom; returns what results.json adds to the run's identity."""
    # `_partial_` so that a loader's own error reaches the user unwrapped by instantiate.
    splits = make_splits(instantiate(cfg.dataset.loader, _partial_=True)(), cfg.dataset, cfg.seed)
    splits.save(out_dir / "splits.json")
    exp = Experiment(cfg, splits, out_dir, student_loss.label)
    a, b = splits.a, splits.b

    # 1-2. Weak supervisor on A with ground truth; its soft predictions on B are the weak labels.
    weak = exp.stage(
        "weak",
        "weak_model",
        ("a", "val", "b", "test"),
        {},
        a,
        a["label"].to_numpy(float),
        CrossEntropy(),
        {"b": b, "val": splits.val, "test": splits.test},
    )
    weak_labels = exp.predictions(weak, "b").rename(columns={"prob": "weak_prob", "label": "gt_label"})
    weak_labels.to_parquet(out_dir / "weak_labels.parquet")

    # 3. Strong ceiling: the strong model on ground truth.
    gt_split = cfg.ceiling_split
    gt = getattr(splits, gt_split)
    ceiling = exp.stage(
        "ceiling",
        "strong_model",
        (gt_split, "val", "test"),
        {"ceiling_split": gt_split},
        gt,
        gt["label"].to_numpy(float),
        CrossEntropy(),
        {"test": splits.test},
    )

    # 4. Strong student: the strong model on B with the weak labels and the configured loss.
    student = exp.stage(
        "student",
        "strong_model",
        ("b", "val", "test"),
        {"loss": plain(cfg.loss), "weak_key": weak.record["key"]},
        b,
        weak_labels["weak_prob"].to_numpy(),
        student_loss,
        {"val": splits.val, "test": splits.test},
    )

    # 5. Metrics.
    results = {
        "status": "done",
        "weak_labels": binary_metrics(weak_labels["weak_prob"], weak_labels["gt_label"]),
        "data": {"guard": splits.guard, "fingerprints": splits.fingerprints(*SPLIT_NAMES)},
    }
    for name, stage in (("weak", weak), ("ceiling", ceiling), ("student", student)):
        results[name] = {
            **stage.record["test"],
            "truncated": stage.record.get("truncated", {}),
            "cached": stage.cached,
            "key": stage.record["key"],
            "train_seconds": stage.record["train_seconds"],
            "cache_path": str(stage.path),
        }
    test_probs = [exp.predictions(r, "test")["prob"].to_numpy() for r in (student, weak)]
    results["student"]["agreement"] = agreement(*test_probs)
    # What a method could select on without ground truth: the student's accuracy on validation
    # labelled by the weak supervisor. Sweepers optimise this, never a test number.
    val_probs = [exp.predictions(r, "val")["prob"].to_numpy() for r in (student, weak)]
    results["student"]["val_weak_acc"] = agreement(*val_probs)
    acc = {name: results[name]["acc"] for name in ("weak", "ceiling", "student")}
    results["pgr"] = pgr(acc["weak"], acc["student"], acc["ceiling"])
    results["pgr_auroc"] = pgr(*(results[n]["auroc"] for n in ("weak", "student", "ceiling")))
    loggers = exp.loggers("metrics")
    log_summary(
        loggers,
        {
            "pgr": results["pgr"],
            "student/test/agreement": results["student"]["agreement"],
            **{f"{n}/test/acc": v for n, v in acc.items()},
        },
    )
    close(loggers)
    return results


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
    tmp = out_dir / "results.json.tmp"
    tmp.write_text(json.dumps(strict(results), indent=2, allow_nan=False))
    shutil.move(tmp, out_dir / "results.json")
