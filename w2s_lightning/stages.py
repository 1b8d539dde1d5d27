"""What one stage does: finetune a classifier on soft targets, then predict probabilities on
the sets it is asked about. The pipeline decides which model, data and loss."""

from __future__ import annotations

import resource
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate

from w2s_lightning.cache import StageCache, stage_key
from w2s_lightning.console import stage_callbacks
from w2s_lightning.data.batches import FeatureExamples, encode, inference_loader, train_loader
from w2s_lightning.data.splits import fingerprint
from w2s_lightning.errors import TrainingDiverged
from w2s_lightning.losses import Loss
from w2s_lightning.models.backbone import load_tokenizer, random_weights
from w2s_lightning.models.system import ClassifierSystem

# The catalogue fields that determine a frozen backbone's pooled features.
FEATURE_FIELDS = ("pretrained", "tokenizer", "from_scratch", "config_overrides", "pooling", "max_length", "dropout")


def run_predict(trainer: L.Trainer, system: ClassifierSystem, examples, batch_size: int, pad_id: int) -> np.ndarray:
    """Predictions in dataset order (inference runs in length order)."""
    out = None
    with warnings.catch_warnings():
        # Lightning cannot see that FixedBatches yields every index; it does, by construction.
        warnings.filterwarnings("ignore", message="You are using a custom batch sampler")
        batches = trainer.predict(system, inference_loader(examples, batch_size, pad_id))
    for index, values in batches:
        if out is None:
            out = np.empty((len(examples), *values.shape[1:]), dtype=np.float32)
        out[index.numpy()] = values.float().numpy()
    return out


def peak_memory() -> dict:
    """Peak GPU memory allocated during the stage, or the process's peak resident memory so far."""
    if torch.cuda.is_available():
        return {"peak_gpu_bytes": torch.cuda.max_memory_allocated()}
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


class Inputs:
    """Turns texts into what the model trains on: token ids, or for a linear probe the frozen
    backbone's pooled features, computed once per (model, texts) and cached like a stage, so
    a sweep of probes never runs a backbone twice on the same data."""

    def __init__(self, cfg, spec, slot: str, system, trainer: L.Trainer, cache: StageCache | None, stage: str):
        self.cfg, self.spec, self.slot, self.stage = cfg, spec, slot, stage
        self.system, self.trainer, self.cache = system, trainer, cache
        self.tokenizer = load_tokenizer(spec)
        self.pad_id = self.tokenizer.pad_token_id
        self.truncated: dict[str, float] = {}  # share of each split's texts cut to fit max_length
        self.feature_entries: list = []  # cache entries of the frozen features computed or read

    def __call__(self, frame: pd.DataFrame, targets, split: str):
        keep_end = self.system.model.pooling == "last"
        where = f"stage {self.stage}, split {split} ({self.spec.name})"
        knob = f"{self.slot}.max_length"
        # Training and validation targets are labels a cut could erase; predicted sets have none.
        labels = np.asarray(targets) > 0.5 if split in ("train", "val") else None
        encoded = encode(frame, self.tokenizer, self.spec.max_length, targets, keep_end, where, knob, labels)
        self.truncated[split] = encoded.truncated_fraction
        if not self.spec.linear_probe:
            return encoded
        return FeatureExamples(self.features(frame, encoded), targets)

    def features(self, frame: pd.DataFrame, encoded) -> torch.Tensor:
        model = {k: self.spec[k] for k in FEATURE_FIELDS}
        if self.cache is not None:  # a backbone finetuned into the cache is named relative to it
            model["pretrained"] = self.cache.portable(model["pretrained"])
        # What the backbone reads: the texts and how they may be cut, not their ids or labels.
        digest = fingerprint(frame.drop(columns=["id", "label", "group"], errors="ignore"))
        key = stage_key(
            "features",
            {
                "model": model,
                "texts": digest,
                "precision": str(self.cfg.trainer.precision),
                "seed": self.cfg.seed if random_weights(self.spec) else None,
            },
        )

        def compute(workdir: Path) -> dict:
            self.system.predict_features = True
            try:
                feats = run_predict(self.trainer, self.system, encoded, self.spec.eval_batch_size, self.pad_id)
            finally:
                self.system.predict_features = False
            if not np.isfinite(feats).all():
                raise TrainingDiverged(
                    f"stage {self.stage}: the frozen backbone of {self.spec.name} gave non-finite features for "
                    f"{int((~np.isfinite(feats).all(1)).sum())} texts; nothing is cached; fix: run it in float32 "
                    "(trainer.precision=32-true)"
                )
            torch.save(torch.from_numpy(feats), workdir / "features.pt")
            return {"model": self.spec.name, "n": len(frame)}

        cache = self.cache or StageCache(Path(self.trainer.default_root_dir) / "features", enabled=False)
        result = cache.run("features", key, compute)
        self.feature_entries.append(result)  # a method's cost and keys name the features it read
        return torch.load(result.path / "features.pt")


def fit_predict(
    cfg,
    spec,
    slot: str,
    stage: str,
    train: pd.DataFrame,
    targets: np.ndarray,
    loss: Loss,
    val: pd.DataFrame,
    val_targets: np.ndarray,
    predict: dict[str, pd.DataFrame],
    workdir: Path,
    loggers: list,
    cache: StageCache | None = None,
    epochs: int | None = None,
    select=None,
) -> dict:
    """Train `spec` (the model of config slot `slot`) on (`train`, `targets`), validating on
    (`val`, `val_targets`), then write `<name>.parquet` (id, prob) for every frame in `predict`.
    `select` (a `methods.selection` strategy) may keep the best checkpoint by validation. The
    frames may lack a `label` column: a stage never needs ground truth it was not given. Returns
    the stage record. A non-finite loss or prediction raises TrainingDiverged."""
    L.seed_everything(cfg.seed, workers=True)  # each stage starts from the same state, cached or not
    system = ClassifierSystem(
        spec, loss, instantiate(cfg.optimizer), cfg.train.warmup_ratio, cfg.train.grad_clip, stage, slot
    )
    trainer = instantiate(
        cfg.trainer,
        max_epochs=epochs or cfg.train.epochs,
        logger=loggers or False,
        default_root_dir=str(workdir),
        callbacks=stage_callbacks(cfg, stage) + (select.callbacks() if select else []),
        **(select.trainer_overrides(len(train), spec.batch_size) if select else {}),
    )
    inputs = Inputs(cfg, spec, slot, system, trainer, cache, stage)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train_examples = inputs(train, targets, "train")
    val_examples = inputs(val, val_targets, "val")
    start = time.perf_counter()
    trainer.fit(
        system,
        train_loader(train_examples, spec.batch_size, inputs.pad_id, cfg.seed, cfg.train.group_by_length),
        inference_loader(val_examples, spec.eval_batch_size, inputs.pad_id),
    )
    train_seconds = time.perf_counter() - start
    record = {
        "model": spec.name,
        "n_train": len(train),
        "train_seconds": train_seconds,
        "train_examples_per_s": (epochs or cfg.train.epochs) * len(train) / train_seconds,
        "val": {k.split("/")[-1]: float(v) for k, v in trainer.callback_metrics.items() if "/val/" in k},
    }
    if select:
        record["selected"] = select.restore(system)
    start = time.perf_counter()
    for name, frame in predict.items():
        examples = inputs(frame, np.zeros(len(frame)), name)
        probs = run_predict(trainer, system, examples, spec.eval_batch_size, inputs.pad_id).astype(np.float64)
        if not np.isfinite(probs).all():
            raise TrainingDiverged(
                f"stage {stage}: {int((~np.isfinite(probs)).sum())} of {len(probs)} predictions on {name} are not "
                f"finite ({slot}.lr={spec.lr}); nothing of this stage is cached; fix: lower {slot}.lr"
            )
        pd.DataFrame({"id": frame["id"], "prob": probs}).to_parquet(workdir / f"{name}.parquet")
    record["predict_seconds"] = time.perf_counter() - start
    record["truncated"] = inputs.truncated
    record.update(peak_memory())
    if cfg.save_weights:
        torch.save(system.model.trainable_state_dict(), workdir / "weights.pt")
    return record
