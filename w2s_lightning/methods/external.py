"""Weak labels produced elsewhere (as openai/weak-to-strong's `--weak_labels_path`): a file of
ids and soft labels p(label = 1) for every example of B and validation (the ids are those of
the run's splits.json), optionally test too (the "weak" side of PGR; without it PGR is
undefined). The file's contents are part of the key, so an edited file is a new experiment."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from w2s_lightning.cache import stage_key
from w2s_lightning.data.files import read_table
from w2s_lightning.errors import DatasetError
from w2s_lightning.experiment import Experiment, Labels
from w2s_lightning.methods import Method


class ExternalLabels(Method):
    name = "file"

    def __init__(self, path: str = "???", id_column: str = "id", prob_column: str = "prob"):
        self.path, self.id_column, self.prob_column = path, id_column, prob_column

    @property
    def key(self) -> dict:
        # The data, not where it lies: a copy elsewhere is the same labels.
        return {"method": self.name, "sha256": hashlib.sha256(Path(self.path).expanduser().read_bytes()).hexdigest()}

    @property
    def label(self) -> str:
        return f"file({Path(self.path).name})"

    def __call__(self, exp: Experiment) -> Labels:
        table = read_table(self.path, knob="labels.path")
        where = f"weak labels file {self.path}"
        for column, knob in ((self.id_column, "labels.id_column"), (self.prob_column, "labels.prob_column")):
            if column not in table.columns:
                raise DatasetError(f"{where}: no column '{column}'; fix: set {knob} to the right column")
        probs = pd.to_numeric(table[self.prob_column], errors="coerce")
        bad = ~probs.between(0, 1)
        if bad.any():
            raise DatasetError(
                f"{where}: column '{self.prob_column}' must hold probabilities in [0, 1]; row {int(np.argmax(bad))} "
                f"(and {int(bad.sum()) - 1} more) does not; fix: write p(label = 1) for each id"
            )
        by_id = pd.Series(probs.to_numpy(), index=table[self.id_column].astype(str))
        if by_id.index.duplicated().any():
            raise DatasetError(f"{where}: ids repeat; fix: one row per example")

        def split(name: str, required: bool) -> pd.DataFrame | None:
            ids = exp.splits.b["id"] if name == "b" else getattr(exp.splits, name)["id"]
            missing = ~ids.isin(by_id.index)
            if missing.any():
                if not required:
                    return None
                raise DatasetError(
                    f"{where}: {int(missing.sum())} of the {len(ids)} examples of split {name} have no label (first "
                    f"id {ids[missing].iloc[0]}); fix: label every id of splits {name!r} in the run's splits.json "
                    "(the splits depend on the dataset settings and the seed)"
                )
            return pd.DataFrame({"id": ids.to_numpy(), "prob": by_id[ids].to_numpy()})

        key = stage_key("file", {"sha256": self.key["sha256"]})
        return Labels(b=split("b", True), val=split("val", True), test=split("test", False), key=key)
