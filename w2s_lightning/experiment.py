"""What every stage of one experiment shares: the config, the splits, the stage cache and the
trackers. `Experiment.stage` trains one model and predicts, or reads the result from the cache
under a key made of the stage's config slice, its inputs' keys and a fingerprint of the data it
read. Methods (`w2s_lightning/methods/`) build on it and never see ground truth they were not
given: `unlabelled(split)` is what they read of B and validation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from w2s_lightning.cache import StageCache, StageResult, stage_key
from w2s_lightning.data.splits import Splits, aligned
from w2s_lightning.loggers import close, stage_loggers
from w2s_lightning.models.identity import source_fields
from w2s_lightning.stages import fit_predict, trainer_key

log = logging.getLogger(__name__)

# Keys that say where data is read from or describe a model, not what a stage computes: the
# data itself is in every key as a fingerprint of the examples, so a moved or copied file keeps
# its cache entries and an edited one misses them.
NOT_IN_KEYS = {"local_path", "path", "test_path", "notes"}


def plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def key_view(node) -> dict:
    """The resolved config without the keys in NOT_IN_KEYS, at any depth."""

    def drop(value):
        if isinstance(value, dict):
            return {k: drop(v) for k, v in value.items() if k not in NOT_IN_KEYS}
        return value

    return drop(plain(node))


@dataclass
class Labels:
    """Soft labels p(label = 1) for B and validation, by id, as a method produced them, and the
    producer's own test predictions (the "weak" side of PGR; None when it has none). `b` may
    carry a boolean `keep` column: the student trains on the kept rows only."""

    b: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame | None
    key: str  # identity of these labels: part of every key that consumes them
    stages: list[StageResult] = field(default_factory=list)  # stages the method ran or reused
    info: dict = field(default_factory=dict)  # what the method reports (counts, its steps)
    uses_ground_truth: bool = False  # an oracle: its rows stay out of the headline numbers


class Experiment:
    def __init__(self, cfg: DictConfig, splits: Splits, out_dir: Path, loss_label: str):
        self.cfg, self.splits, self.out_dir = cfg, splits, out_dir
        enabled = cfg.cache.enabled
        self.cache = StageCache(
            cfg.paths.cache_dir if enabled else out_dir / "stages", enabled, cfg.cache.force_retrain, cfg.cache.lock
        )
        self.common = {
            "dataset": key_view(cfg.dataset),
            "seed": cfg.seed,
            "train": plain(cfg.train),
            "optimizer": plain(cfg.optimizer),
            "trainer": trainer_key(cfg),
        }
        self.tags = [
            f"weak:{cfg.weak_model.name}",
            f"strong:{cfg.strong_model.name}",
            f"loss:{loss_label}",
            f"seed:{cfg.seed}",
            f"dataset:{cfg.dataset.name}",
        ]

    def unlabelled(self, split: str) -> pd.DataFrame:
        """A split as a method may read it: texts and ids, no ground truth."""
        return getattr(self.splits, split).drop(columns="label")

    def labelled(self, split: str) -> np.ndarray:
        """Ground truth of a split whose labels a stage may train on (A, or B for the ceiling)."""
        return getattr(self.splits, split)["label"].to_numpy(float)

    def model_key(self, spec) -> dict:
        """A catalogue entry as the keys of what it computes name it: its fields, and the weights
        its sources hold (a folder finetuned into again keeps its path; models/identity.py)."""
        return {**key_view(spec), **source_fields(spec, self.cache)}

    def stage(
        self,
        stage: str,
        spec,
        slot: str,
        train: pd.DataFrame,
        targets: np.ndarray,
        loss,
        val_targets: np.ndarray,
        predict: dict[str, pd.DataFrame],
        key_extra: dict,
        reads: tuple[str, ...],
        epochs: int | None = None,
        select=None,
        seed: int | None = None,
    ) -> StageResult:
        """Fit `spec` (config slot `slot`, for messages) on (`train`, `targets`), validate on
        (validation, `val_targets`), predict every frame of `predict`; or read all of it from the
        cache. `key_extra` names whatever else determines the result (the keys of the labels it
        trains on, the loss); `reads` names the splits whose data it reads."""
        payload = {
            **self.common,
            "model": self.model_key(spec),
            "data": self.splits.fingerprints(*reads),
            "predicts": sorted(predict),
            "epochs": epochs,
            "select": select.key if select else None,
            **key_extra,
        }
        cfg = self.cfg
        if seed is not None and seed != cfg.seed:  # another seed for training only; the splits stay
            payload["seed"], cfg = seed, OmegaConf.merge(cfg, {"seed": seed})
        key = stage_key(stage, payload)

        def compute(workdir: Path) -> dict:
            # Only reached when no finished copy exists, also after waiting for another job's lock.
            log.info("stage %s: training %s on %d examples (key %s)", stage, spec.name, len(train), key)
            loggers = stage_loggers(self.cfg, stage, self.tags)
            try:
                val = self.unlabelled("val")
                return fit_predict(
                    cfg,
                    spec,
                    slot,
                    stage,
                    train,
                    targets,
                    loss,
                    val,
                    val_targets,
                    predict,
                    workdir,
                    loggers,
                    self.cache,
                    epochs,
                    select,
                )
            finally:
                close(loggers)

        try:
            result = self.cache.run(stage, key, compute)
        except Exception as error:
            error.stage = stage  # results.json names the stage that failed
            raise
        if result.cached:
            log.info("stage %s: reusing %s from the cache (%s)", stage, spec.name, result.path)
        return result

    def predictions(self, result: StageResult, split: str) -> pd.DataFrame:
        """A stage's stored predictions (id, prob) on `split`, joined to the split's examples by id."""
        stored = pd.read_parquet(result.path / f"{split}.parquet")
        return aligned(stored, getattr(self.splits, split), f"stage {result.record['stage']}, split {split}")
