"""Several weak supervisors (other seeds, other models) whose soft labels are combined into one
set: averaging cancels part of each member's idiosyncratic errors."""

from __future__ import annotations

import numpy as np
import pandas as pd

from w2s_lightning.cache import stage_key
from w2s_lightning.config import model_entry
from w2s_lightning.errors import ConfigError
from w2s_lightning.experiment import Experiment, Labels
from w2s_lightning.methods import Method
from w2s_lightning.methods.supervisor import labels_of, train_supervisor

RULES = ("mean", "logit_mean", "vote")


def combine(probs: np.ndarray, rule: str) -> np.ndarray:
    """Members' p(label = 1), shape (members, examples) -> one p per example."""
    if rule == "mean":
        return probs.mean(0)
    if rule == "logit_mean":  # the geometric mean of the odds: confident members weigh more
        p = np.clip(probs, 1e-6, 1 - 1e-6)
        return 1 / (1 + np.exp(-np.log(p / (1 - p)).mean(0)))
    return (probs > 0.5).mean(0)  # vote: the share of members that say 1


class Ensemble(Method):
    """Members are every (model, seed) of `models` × `seeds`; `models: null` is the weak model."""

    name = "ensemble"

    def __init__(self, models: list[str] | None = None, seeds: list[int] = (0, 1, 2), rule: str = "mean"):
        if rule not in RULES:
            raise ConfigError(f"labels.rule={rule}: not one of {RULES}; fix: set labels.rule to one of them")
        if not seeds:
            raise ConfigError("labels.seeds is empty; fix: give at least one seed, e.g. labels.seeds=[0,1,2]")
        self.models = list(models) if models else None
        self.seeds, self.rule = list(seeds), rule

    def __call__(self, exp: Experiment) -> Labels:
        specs = [model_entry(m) for m in self.models] if self.models else [exp.cfg.weak_model]
        members = [labels_of(exp, train_supervisor(exp, spec, seed)) for spec in specs for seed in self.seeds]

        def combined(split: str) -> pd.DataFrame:
            frames = [getattr(m, split) for m in members]
            probs = np.stack([f["prob"].to_numpy() for f in frames])
            return pd.DataFrame({"id": frames[0]["id"], "prob": combine(probs, self.rule)})

        return Labels(
            b=combined("b"),
            val=combined("val"),
            test=combined("test"),
            key=stage_key("ensemble", {"members": [m.key for m in members], "rule": self.rule}),
            stages=[s for m in members for s in m.stages],
            info={"members": [{"model": m.stages[0].record["model"], "test": m.test} for m in members]},
        )
