"""The weak supervisor of Burns et al. (2023): a small model finetuned on ground truth (split A)
whose soft predictions on B are the weak labels. Ensembles and bootstrapping train it the same way."""

from __future__ import annotations

from w2s_lightning.cache import StageResult
from w2s_lightning.experiment import Experiment, Labels
from w2s_lightning.losses import CrossEntropy
from w2s_lightning.methods import Method

PREDICTS = ("b", "val", "test")


def train_supervisor(exp: Experiment, spec=None, seed: int | None = None) -> StageResult:
    """Fit a model (the weak model unless `spec` names another) on A with ground truth and
    predict B, validation and test."""
    spec = spec if spec is not None else exp.cfg.weak_model
    return exp.stage(
        "weak",
        spec,
        "weak_model",
        exp.splits.a,
        exp.labelled("a"),
        CrossEntropy(),
        exp.labelled("val"),
        {split: exp.unlabelled(split) for split in PREDICTS},
        key_extra={},
        reads=("a", *PREDICTS),
        seed=seed,
    )


def labels_of(exp: Experiment, result: StageResult) -> Labels:
    b, val, test = (exp.predictions(result, split) for split in PREDICTS)
    return Labels(b=b, val=val, test=test, key=result.record["key"], stages=[result])


class WeakSupervisor(Method):
    """One weak supervisor: the paper's setting."""

    name = "weak"

    def __call__(self, exp: Experiment) -> Labels:
        return labels_of(exp, train_supervisor(exp))
