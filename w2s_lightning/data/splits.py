"""Disjoint, seeded splits: A (weak supervisor's ground truth), B (weak labels for the
student), validation and test."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from w2s_lightning.data.sources import DatasetError, Frames

SPLIT_NAMES = ("a", "b", "val", "test")


@dataclass
class Splits:
    a: pd.DataFrame
    b: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame

    def items(self):
        return ((name, getattr(self, name)) for name in SPLIT_NAMES)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({name: frame["id"].tolist() for name, frame in self.items()}))


def _shuffled(frame: pd.DataFrame, seed: int, balance: bool) -> pd.DataFrame:
    """Shuffle (never take the first rows of a sorted file); with `balance`, keep as many
    examples of the majority class as the minority has."""
    frame = frame.sample(frac=1.0, random_state=seed)
    if balance:
        n = frame["label"].value_counts().min()
        frame = frame.groupby("label", group_keys=False).head(n).sample(frac=1.0, random_state=seed)
    return frame.reset_index(drop=True)


KNOBS = {"a": "n_weak", "b": "n_strong", "val": "n_val", "test": "n_test"}


def _take(pool: pd.DataFrame, sizes: dict[str, int], dataset: str, pool_name: str) -> dict:
    need = sum(sizes.values())
    if need > len(pool):
        wanted = ", ".join(f"dataset.{KNOBS[k]}={v}" for k, v in sizes.items())
        raise DatasetError(
            f"dataset '{dataset}': the {pool_name} pool has {len(pool)} examples but the splits "
            f"need {need} ({wanted}); fix: lower those sizes on the command line"
        )
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = pool.iloc[start : start + size].reset_index(drop=True)
        start += size
    return out


def make_splits(frames: Frames, dataset_cfg, seed: int) -> Splits:
    """The test split depends only on `test_seed`, so every training seed is scored on the
    same examples; A, B and validation are drawn with the run's seed."""
    name, balance = dataset_cfg.name, dataset_cfg.balance
    train = frames["train"]
    if train["id"].duplicated().any():
        raise DatasetError(f"dataset '{name}': example ids are not unique; fix the id column")
    n_test = dataset_cfg.n_test
    if "test" in frames:
        test = _take(_shuffled(frames["test"], dataset_cfg.test_seed, balance), {"test": n_test}, name, "test")
        pool = train
    else:
        carved = _shuffled(train, dataset_cfg.test_seed, balance=False)
        cut = int(len(carved) * dataset_cfg.holdout_fraction)
        test_pool, pool = carved.iloc[:cut], carved.iloc[cut:]
        test = _take(_shuffled(test_pool, dataset_cfg.test_seed, balance), {"test": n_test}, name, "test")
    sizes = {"a": dataset_cfg.n_weak, "b": dataset_cfg.n_strong, "val": dataset_cfg.n_val}
    parts = _take(_shuffled(pool, int(seed), balance), sizes, name, "train")
    return Splits(**parts, test=test["test"])
