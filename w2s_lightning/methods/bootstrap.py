"""Bootstrapping (Burns et al. 2023, §4.3.1): the weak supervisor labels an intermediate model,
which labels the next, up to the strong student: weak → m1 → … → strong.

Each intermediate step learns from the previous step's labels on B and must label B in turn,
never the examples it trained on (it would hand its own labels back). So every step is
cross-fitted: B's items are split in two folds; the model trained on one fold labels the other,
and validation and test predictions are the mean of the two. Steps are cached stages, so chains
that share a prefix reuse it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from w2s_lightning.cache import stage_key
from w2s_lightning.config import model_entry
from w2s_lightning.data.splits import aligned
from w2s_lightning.errors import ConfigError
from w2s_lightning.experiment import Experiment, Labels
from w2s_lightning.losses import CrossEntropy
from w2s_lightning.methods import Method
from w2s_lightning.methods.supervisor import labels_of, train_supervisor

FOLDS = 2


def folds(exp: Experiment) -> np.ndarray:
    """Fold (0 or 1) of every example of B, by item, fixed by the run's seed."""
    groups = exp.splits.b["group"]
    order = groups.drop_duplicates().sample(frac=1.0, random_state=exp.cfg.seed).to_numpy()
    fold_of = {group: i % FOLDS for i, group in enumerate(order)}
    return groups.map(fold_of).to_numpy()


def step(exp: Experiment, spec, labels: Labels, index: int) -> Labels:
    """One intermediate model cross-fitted on B with `labels`."""
    b, fold = exp.unlabelled("b"), folds(exp)
    targets = labels.b["prob"].to_numpy()
    results, out_of_fold = [], np.empty(len(b))
    for k in range(FOLDS):
        train, held_out = fold == k, fold != k
        result = exp.stage(
            "bootstrap",
            spec,
            f"labels.chain[{index}]",
            b[train],
            targets[train],
            CrossEntropy(),
            labels.val["prob"].to_numpy(),
            {"held_out": b[held_out], "val": exp.unlabelled("val"), "test": exp.unlabelled("test")},
            key_extra={"labels": labels.key, "fold": k, "folds": FOLDS},
            reads=("b", "val", "test"),
        )
        stored = pd.read_parquet(result.path / "held_out.parquet")
        predicted = aligned(stored, b[held_out], f"stage bootstrap, fold {k}, held-out part of split b")
        out_of_fold[held_out] = predicted["prob"].to_numpy()
        results.append(result)

    def mean(split: str) -> pd.DataFrame:
        frames = [exp.predictions(r, split) for r in results]
        return frames[0].assign(prob=np.mean([f["prob"].to_numpy() for f in frames], axis=0))

    return Labels(
        b=pd.DataFrame({"id": b["id"].to_numpy(), "prob": out_of_fold}),
        val=mean("val"),
        test=mean("test"),
        key=stage_key("bootstrap", {"steps": [r.record["key"] for r in results]}),
        stages=results,
    )


class Bootstrap(Method):
    """`chain`: the intermediate models (catalogue names), smallest first."""

    name = "bootstrap"

    def __init__(self, chain: list[str] = ()):
        if not chain:
            raise ConfigError(
                "labels.chain is empty; fix: name the intermediate models, e.g. labels.chain=[pythia_410m,pythia_1b]"
            )
        self.chain = list(chain)

    def __call__(self, exp: Experiment) -> Labels:
        weak = labels_of(exp, train_supervisor(exp))
        labels, stages = weak, list(weak.stages)
        steps = [{"model": exp.cfg.weak_model.name, "test": weak.test}]
        for index, name in enumerate(self.chain):
            labels = step(exp, model_entry(name), labels, index)
            stages += labels.stages
            steps.append({"model": name, "test": labels.test})
        # PGR stays measured against the weak supervisor, as in the direct weak -> strong run.
        return Labels(
            b=labels.b,
            val=labels.val,
            test=weak.test,
            key=labels.key,
            stages=stages,
            info={"steps": steps},
        )
