"""Drop the least confident weak labels: the student trains only on the B examples whose weak
label is farthest from 0.5. A label near 0.5 says the weak supervisor could not tell; training
on it mostly teaches the student the supervisor's indecision. Validation is kept whole (the
student's validation score reads every row)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from w2s_lightning.cache import stage_key
from w2s_lightning.data.splits import aligned
from w2s_lightning.errors import ConfigError
from w2s_lightning.experiment import Experiment, Labels
from w2s_lightning.methods import Method


def drop_lowest(score: np.ndarray, fraction: float) -> np.ndarray:
    """A keep mask that is False for the round(fraction · n) rows of lowest `score` (of equal
    scores, the earlier row goes first)."""
    keep = np.ones(len(score), dtype=bool)
    keep[np.argsort(score, kind="stable")[: round(fraction * len(score))]] = False
    return keep


class ConfidenceFilter(Method):
    """`fraction`: the share of B dropped, those with the smallest |p − 0.5|."""

    name = "confidence"

    def __init__(self, fraction: float = 0.2):
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"refine.fraction={fraction}: must be in (0, 1); fix: set refine.fraction to e.g. 0.2")
        self.fraction = fraction

    def __call__(self, exp: Experiment, labels: Labels, start) -> Labels:
        b = exp.unlabelled("b")
        prob = aligned(labels.b, b, "refine=confidence, the labels of B")["prob"].to_numpy()
        confidence = np.abs(prob - 0.5)
        keep = drop_lowest(confidence, self.fraction)
        keep &= labels.b["keep"].to_numpy() if "keep" in labels.b else True
        return Labels(
            b=pd.DataFrame({"id": b["id"].to_numpy(), "prob": prob, "keep": keep}),
            val=labels.val,
            test=labels.test,
            key=stage_key("refine", {"labels": labels.key, **self.key}),
            stages=list(labels.stages),
            info={"filtered": int((~keep).sum()), "min_confidence_kept": float(confidence[keep].min())},
            uses_ground_truth=labels.uses_ground_truth,
        )
