"""The strong model's own view of B, for refiners: its frozen backbone's pooled features (last
layer, pooled as its catalogue entry says), and the refiner skeleton built on them.

The features come from `stages.Inputs.features` under the very cache key a linear probe of the
same model uses, so a probe's stages and a refiner share one entry, and the backbone is loaded
only when that entry is missing. A refiner subclass supplies `predict` (a label per example from
the features and the weak labels of B); `FeatureRefiner` relabels with it and/or drops the
examples whose weak label it contradicts most, as EleutherAI/w2s's `--probe_relabel` and
`--probe_filter` do."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from w2s_lightning.cache import stage_key
from w2s_lightning.data.splits import aligned
from w2s_lightning.errors import ConfigError
from w2s_lightning.experiment import Experiment, Labels
from w2s_lightning.methods import Method
from w2s_lightning.methods.confidence import drop_lowest
from w2s_lightning.stages import Inputs

STAGE = "refine"


def frozen_inputs(exp: Experiment, spec, stage: str = STAGE, callbacks=None) -> Inputs:
    """The strong model's `Inputs` outside a stage: its features under the keys a probe's stages
    look up. `stage` names its passes on the console and its working folder."""
    return Inputs(exp.cfg, spec, "strong_model", stage, exp.cache, exp.out_dir / stage, callbacks)


def strong_features(exp: Experiment, spec, splits: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], list]:
    """Float32 features of each split (rows in `exp.unlabelled(split)` order) and their cache entries."""
    inputs = frozen_inputs(exp, spec)
    features = {}
    for split in splits:
        frame = exp.unlabelled(split)
        features[split] = inputs.features(frame, inputs.encode(frame, split)).float()
    inputs.release()
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
