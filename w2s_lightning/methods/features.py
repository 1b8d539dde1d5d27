"""The strong model's own view of B, for refiners: its frozen backbone's pooled features (last
layer, pooled as its catalogue entry says), and the refiner skeleton built on them.

The features come from `stages.Inputs.features` under the very cache key a linear probe of the
same model uses, so a probe's stages and a refiner share one entry, and the backbone is loaded
only when that entry is missing. A refiner subclass supplies `predict` (a label per example from
the features and the weak labels of B); `FeatureRefiner` relabels with it and/or drops the
examples whose weak label it contradicts most, as EleutherAI/w2s's `--probe_relabel` and
`--probe_filter` do."""

from __future__ import annotations

from functools import cached_property

import lightning as L
import numpy as np
import pandas as pd
import torch

from w2s_lightning.cache import stage_key
from w2s_lightning.data.batches import encode
from w2s_lightning.data.splits import aligned
from w2s_lightning.errors import ConfigError
from w2s_lightning.experiment import Experiment, Labels
from w2s_lightning.methods import Method
from w2s_lightning.methods.confidence import drop_lowest
from w2s_lightning.models.backbone import load_config, load_tokenizer, random_weights
from w2s_lightning.models.classifier import resolve_pooling
from w2s_lightning.models.system import FeatureSystem
from w2s_lightning.progress import EpochLines
from w2s_lightning.stages import Inputs, make_trainer

STAGE = "refine"


class FrozenInputs(Inputs):
    """`Inputs` for feature extraction alone: a frozen encoder (no head) and a trainer, built on
    first use, which `Inputs.features` makes only on a cache miss. `stage` names its passes on the
    console; `callbacks` join the trainer's."""

    def __init__(self, exp: Experiment, spec, stage: str = STAGE, callbacks=()):  # Inputs' fields; lazy ones below
        self.cfg, self.spec, self.slot, self.stage = exp.cfg, spec, "strong_model", stage
        self.callbacks = list(callbacks)
        self.cache, self.workdir = exp.cache, exp.out_dir / stage
        self.tokenizer = load_tokenizer(spec)
        self.pad_id = self.tokenizer.pad_token_id
        self.keep_end = resolve_pooling(spec, load_config(spec)) == "last"
        self.truncated, self.feature_entries = {}, []

    @cached_property
    def system(self) -> FeatureSystem:
        if random_weights(self.spec):  # drawn as a stage draws them, so its probe gets the same weights
            L.seed_everything(self.cfg.seed, workers=True)
        return FeatureSystem(self.spec)

    @cached_property
    def trainer(self) -> L.Trainer:
        # Lines, never a live bar: these passes may run beside a stage that draws its own (prefetch.py).
        callbacks = [EpochLines(self.stage)] if self.cfg.trainer.get("enable_progress_bar", True) else []
        callbacks += self.callbacks
        return make_trainer(self.cfg, logger=False, default_root_dir=str(self.workdir), callbacks=callbacks)

    def encode(self, frame: pd.DataFrame, split: str):
        where = f"stage {self.stage}, split {split} ({self.spec.name})"
        return encode(frame, self.tokenizer, self.spec.max_length, np.zeros(len(frame)), self.keep_end, where)


def strong_features(exp: Experiment, spec, splits: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], list]:
    """Float32 features of each split (rows in `exp.unlabelled(split)` order) and their cache entries."""
    inputs = FrozenInputs(exp, spec)
    features = {}
    for split in splits:
        frame = exp.unlabelled(split)
        features[split] = inputs.features(frame, inputs.encode(frame, split)).float()
    return features, inputs.feature_entries


def floats(values) -> torch.Tensor:
    return torch.tensor(np.asarray(values, dtype=np.float32))  # a copy: parquet-backed arrays are read-only


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class FeatureRefiner(Method):
    """Relabel B (and validation) with `predict`'s labels, and/or drop the `drop` share of B whose
    weak label is farthest from them. Subclasses set `relabel` and `drop` in `__init__`."""

    relabel: bool
    drop: float

    def check(self) -> None:
        if not 0.0 <= self.drop < 1.0:
            raise ConfigError(f"refine.drop={self.drop}: must be in [0, 1); fix: set refine.drop to e.g. 0.1")
        if not self.relabel and self.drop == 0.0:
            raise ConfigError(
                f"refine={self.name} with relabel=false and drop=0 changes nothing; fix: set refine.relabel=true "
                "or refine.drop to e.g. 0.1 (or use refine=none)"
            )

    def predict(self, exp, b: torch.Tensor, weak: torch.Tensor, groups: np.ndarray, val, weak_val: torch.Tensor):
        """New p(label = 1) for every example of B, and of validation when its features `val` are
        given (else None), from B's features, weak labels and items."""
        raise NotImplementedError

    def __call__(self, exp: Experiment, labels: Labels, start) -> Labels:
        b, val_ids = exp.unlabelled("b"), exp.unlabelled("val")["id"]
        weak = aligned(labels.b, b, f"refine={self.name}, the labels of B")["prob"].to_numpy()
        weak_val = aligned(labels.val, val_ids.to_frame(), f"refine={self.name}, the labels of validation")
        feats, entries = strong_features(exp, start.spec, ("b", "val") if self.relabel else ("b",))
        pred_b, pred_val = self.predict(
            exp, feats["b"], floats(weak), b["group"].to_numpy(), feats.get("val"), floats(weak_val["prob"])
        )
        new = pred_b if self.relabel else weak
        keep = drop_lowest(-np.abs(pred_b - weak), self.drop)  # the largest disagreements go
        keep &= labels.b["keep"].to_numpy() if "keep" in labels.b else True
        val = labels.val
        if self.relabel:  # validation too, as EleutherAI/w2s does; never filtered (every row is scored)
            val = pd.DataFrame({"id": val_ids.to_numpy(), "prob": pred_val})
        key = {
            "labels": labels.key,
            "start": start.key,
            "seed": exp.cfg.seed,
            "features": [e.record["key"] for e in entries],
            **self.key,
        }
        return Labels(
            b=pd.DataFrame({"id": b["id"].to_numpy(), "prob": new, "keep": keep}),
            val=val,
            test=labels.test,
            key=stage_key(STAGE, key),
            stages=[*labels.stages, *entries],
            info={
                "relabelled": len(b) if self.relabel else 0,
                "filtered": int((~keep).sum()),
                "mean_shift": float(np.abs(new - weak).mean()),
            },
            uses_ground_truth=labels.uses_ground_truth,
        )
