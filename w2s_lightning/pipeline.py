"""One weak-to-strong experiment, top to bottom:

    weak supervisor -> weak labels -> strong ceiling -> strong student -> metrics

Every stage is cached under a hash of the config that determines it, so a sweep, a rerun
after a crash and a parallel job all find finished work instead of redoing it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from w2s_lightning.cache import StageCache, StageResult, stage_key
from w2s_lightning.data.splits import Splits, make_splits
from w2s_lightning.loggers import close, log_summary
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


# Keys that say where something is read from or describe it, not what a stage computes: a hub
# dataset read from a local copy, or a model file's memory notes, keep their cache entries.
NOT_IN_KEYS = {"local_path", "notes"}


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

    def __init__(self, cfg: DictConfig, splits: Splits, out_dir: Path, loss_name: str):
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
            f"loss:{loss_name}",
            f"seed:{cfg.seed}",
            f"dataset:{cfg.dataset.name}",
        ]

    def loggers(self, stage: str, extra_tags: tuple[str, ...] = ()) -> list:
        return [
            instantiate(node)(stage=stage, tags=self.tags + list(extra_tags))
            for node in (self.cfg.logger or {}).values()
            if node is not None
        ]

    def stage(self, stage: str, spec, key_extra: dict, train: pd.DataFrame, targets, loss, predict) -> StageResult:
        key = stage_key(stage, {**self.common, "model": key_view(spec), **key_extra})

        def compute(workdir: Path) -> dict:
            # Only reached when no finished copy exists, also after waiting for another job's lock.
            log.info("stage %s: training %s on %d examples (key %s)", stage, spec.name, len(train), key)
            loggers = self.loggers(stage)
            try:
                record = fit_predict(
                    self.cfg, spec, stage, train, targets, loss, self.splits.val, predict, workdir, loggers, self.cache
                )
                log_summary(loggers, {f"{stage}/test/{k}": v for k, v in record["test"].items()})
            finally:
                close(loggers)
            return record

        result = self.cache.run(stage, key, compute)
        if result.cached:
            log.info("stage %s: reusing %s from the cache (%s)", stage, spec.name, result.path)
            loggers = self.loggers(stage, ("cached",))
            log_summary(loggers, {f"{stage}/test/{k}": v for k, v in result.record["test"].items()}, cached=True)
            close(loggers)
        return result


def run(cfg: DictConfig) -> float | None:
    """Run one experiment; return its PGR (None when skipped or undefined)."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    student_loss = instantiate(cfg.loss)
    results = {
        "weak_model": cfg.weak_model.name,
        "strong_model": cfg.strong_model.name,
        "weak_size": cfg.weak_model.size,
        "strong_size": cfg.strong_model.size,
        "loss": student_loss.name,
        "dataset": cfg.dataset.name,
        "seed": cfg.seed,
        "name": cfg.name,
    }
    if reason := pair_skip_reason(cfg):
        log.warning("skipping pair: %s", reason)
        write_results(out_dir, {**results, "status": "skipped", "reason": reason})
        return None

    splits = make_splits(instantiate(cfg.dataset.loader), cfg.dataset, cfg.seed)
    splits.save(out_dir / "splits.json")
    exp = Experiment(cfg, splits, out_dir, student_loss.name)
    a, b = splits.a, splits.b

    # 1-2. Weak supervisor on A with ground truth; its soft predictions on B are the weak labels.
    weak = exp.stage(
        "weak", cfg.weak_model, {}, a, a["label"].to_numpy(float), CrossEntropy(), {"b": b, "test": splits.test}
    )
    weak_labels = pd.read_parquet(weak.path / "b.parquet")
    weak_labels = weak_labels.rename(columns={"prob": "weak_prob", "label": "gt_label"})
    weak_labels.to_parquet(out_dir / "weak_labels.parquet")
    weak_label_metrics = binary_metrics(weak_labels["weak_prob"], weak_labels["gt_label"])

    # 3. Strong ceiling: the strong model on ground truth.
    gt = a if cfg.ceiling_split == "a" else b
    ceiling = exp.stage(
        "ceiling",
        cfg.strong_model,
        {"ceiling_split": cfg.ceiling_split},
        gt,
        gt["label"].to_numpy(float),
        CrossEntropy(),
        {"test": splits.test},
    )

    # 4. Strong student: the strong model on B with the weak labels and the configured loss.
    student = exp.stage(
        "student",
        cfg.strong_model,
        {"loss": plain(cfg.loss), "weak_key": weak.record["key"]},
        b,
        weak_labels["weak_prob"].to_numpy(),
        student_loss,
        {"test": splits.test},
    )

    # 5. Metrics.
    test_probs = {
        name: pd.read_parquet(r.path / "test.parquet")["prob"].to_numpy()
        for name, r in (("weak", weak), ("student", student))
    }
    results.update(status="done", weak_labels=weak_label_metrics)
    for name, stage in (("weak", weak), ("ceiling", ceiling), ("student", student)):
        results[name] = {
            **stage.record["test"],
            "cached": stage.cached,
            "key": stage.record["key"],
            "train_seconds": stage.record["train_seconds"],
            "cache_path": str(stage.path),
        }
    results["student"]["agreement"] = agreement(test_probs["student"], test_probs["weak"])
    acc = {name: results[name]["acc"] for name in ("weak", "ceiling", "student")}
    results["pgr"] = pgr(acc["weak"], acc["student"], acc["ceiling"])
    results["pgr_auroc"] = pgr(*(results[n]["auroc"] for n in ("weak", "student", "ceiling")))
    write_results(out_dir, results)
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
    log.info(
        "weak %.3f | student %.3f | ceiling %.3f | PGR %s",
        acc["weak"],
        acc["student"],
        acc["ceiling"],
        "undefined" if results["pgr"] is None else f"{results['pgr']:.3f}",
    )
    return results["pgr"]


def write_results(out_dir: Path, results: dict) -> None:
    tmp = out_dir / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    shutil.move(tmp, out_dir / "results.json")
