"""Disjoint, seeded splits: A (weak supervisor's ground truth), B (weak labels for the
student), validation and test. Splits are disjoint by item, not only by example: the binary
examples made from one question (one per option) always land in the same split, so the weak
supervisor never sees a sibling of an example it labels, and no test question is trained on.
Before splitting, the duplicate guard (`leakage.py`) drops repeated texts and training texts
that stand in the test set, and counts them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from w2s_lightning.data.leakage import drop_repeats, drop_test_overlap, source_of
from w2s_lightning.errors import DataMismatch, DatasetError

SPLIT_NAMES = ("a", "b", "val", "test")
KNOBS = {"a": "n_weak", "b": "n_strong", "val": "n_val", "test": "n_test"}
# The columns that define what a model is shown; a change to any of them is a change of data.
FINGERPRINT_COLUMNS = ("id", "text", "label", "group", "cut_start", "cut_end", "cut_from")


def fingerprint(frame: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for column in FINGERPRINT_COLUMNS:
        if column in frame:
            digest.update(f"{column}\x1e{len(frame)}\x1e".encode())
            digest.update("\x1f".join(map(str, frame[column])).encode())
    return digest.hexdigest()[:16]


@dataclass
class Splits:
    a: pd.DataFrame
    b: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    guard: dict = field(default_factory=dict)  # what the duplicate guard dropped, by reason

    def items(self):
        return ((name, getattr(self, name)) for name in SPLIT_NAMES)

    def fingerprints(self, *names: str) -> dict[str, str]:
        return {name: fingerprint(getattr(self, name)) for name in names}

    def to_json(self) -> str:
        """splits.json: each split's example ids, under `items` its item ids, under `guard` the drops."""
        record = {name: frame["id"].tolist() for name, frame in self.items()}
        record["items"] = {name: frame["group"].unique().tolist() for name, frame in self.items()}
        record["guard"] = self.guard
        return json.dumps(record)

    def save(self, path: Path) -> None:
        path.write_text(self.to_json())


def with_groups(frame: pd.DataFrame) -> pd.DataFrame:
    """Loaders that know no items make each example its own item."""
    if "group" in frame:
        return frame
    grouped = frame.assign(group=frame["id"])
    grouped.attrs = dict(frame.attrs)
    return grouped


def check_both_classes(frame: pd.DataFrame, dataset: str, what: str) -> None:
    counts = frame["label"].value_counts()
    if len(counts) < 2:
        only = "no examples" if counts.empty else f"only label {counts.index[0]}"
        raise DatasetError(
            f"dataset '{dataset}': {what} ({source_of(frame, 'the data')}) has {only}; a weak-to-strong "
            "experiment needs both classes (accuracy and AUROC are meaningless otherwise); fix: check "
            "dataset.label_column and the file, or add examples of the other class"
        )


def grouped_order(frame: pd.DataFrame, seed: int, balance: bool) -> pd.DataFrame:
    """Shuffle by item, keeping each item's examples together (never take the first rows of a
    sorted file); with `balance`, keep as many examples of the majority class as the minority has."""
    frame = frame.sample(frac=1.0, random_state=seed)
    if balance:
        n = frame["label"].value_counts().min()
        frame = frame.groupby("label", group_keys=False).head(n)
    groups = frame["group"].drop_duplicates().sample(frac=1.0, random_state=seed)
    rank = pd.Series(range(len(groups)), index=groups.to_numpy())
    order = rank[frame["group"].to_numpy()].to_numpy().argsort(kind="stable")
    return frame.iloc[order].reset_index(drop=True)


def take(pool: pd.DataFrame, sizes: dict[str, int], dataset: str, pool_name: str) -> dict[str, pd.DataFrame]:
    """Consecutive runs of `pool`, one per split; the rest of an item cut at a split's end is
    left out of every later split."""
    groups = pool["group"].to_numpy()
    out, start = {}, 0
    for name, size in sizes.items():
        end = start + size
        if end > len(pool):
            wanted = ", ".join(f"dataset.{KNOBS[k]}={v}" for k, v in sizes.items())
            raise DatasetError(
                f"dataset '{dataset}': the {pool_name} pool has {len(pool)} examples but the splits "
                f"need {sum(sizes.values())} ({wanted}), and each split takes whole items; fix: lower those "
                "sizes on the command line"
            )
        out[name] = pool.iloc[start:end].reset_index(drop=True)
        while end < len(pool) and groups[end] == groups[end - 1]:
            end += 1
        start = end
    return out


def holdout(pool: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(test pool, training pool): whole items, about `fraction` of the examples for test."""
    ordered = grouped_order(pool, seed, balance=False)
    cut = int(len(ordered) * fraction)
    groups = ordered["group"].to_numpy()
    while 0 < cut < len(ordered) and groups[cut] == groups[cut - 1]:
        cut += 1
    return ordered.iloc[:cut].reset_index(drop=True), ordered.iloc[cut:].reset_index(drop=True)


def make_splits(frames: dict[str, pd.DataFrame], dataset_cfg, seed: int) -> Splits:
    """The test split depends only on `test_seed`, so every training seed is scored on the
    same examples; A, B and validation are drawn with the run's seed."""
    name, balance = dataset_cfg.name, dataset_cfg.balance
    max_overlap, knob = dataset_cfg.get("max_overlap", 0.01), "dataset.max_overlap"
    train = with_groups(frames["train"])
    if train["id"].duplicated().any():
        raise DatasetError(f"dataset '{name}': example ids are not unique; fix the id column")
    check_both_classes(train, name, "the training data")
    guard = {}
    pool, guard["repeated_train_texts"] = drop_repeats(train, name, max_overlap, knob)
    if "test" in frames:
        test = with_groups(frames["test"])
        check_both_classes(test, name, "the test data")
        test_pool, guard["repeated_test_texts"] = drop_repeats(test, name, max_overlap, knob)
        pool, guard["train_texts_in_test"] = drop_test_overlap(pool, test_pool, name, max_overlap, knob)
    else:
        # Repeats are gone, so a held-out item shares no text with training.
        test_pool, pool = holdout(pool, dataset_cfg.holdout_fraction, dataset_cfg.test_seed)
    test = take(grouped_order(test_pool, dataset_cfg.test_seed, balance), {"test": dataset_cfg.n_test}, name, "test")
    sizes = {"a": dataset_cfg.n_weak, "b": dataset_cfg.n_strong, "val": dataset_cfg.n_val}
    parts = take(grouped_order(pool, int(seed), balance), sizes, name, "train")
    splits = Splits(**parts, test=test["test"], guard=guard)
    for split in ("a", "b", "test"):
        check_both_classes(getattr(splits, split), name, f"split {split}")
    return splits


def aligned(predictions: pd.DataFrame, examples: pd.DataFrame, what: str) -> pd.DataFrame:
    """`predictions` (with an `id` column) in the order of `examples`, checked id for id: a
    cached stage read against other data is an error, never a silent misalignment."""
    if len(predictions) != len(examples) or not (predictions["id"].to_numpy() == examples["id"].to_numpy()).all():
        missing = len(set(examples["id"]) - set(predictions["id"]))
        raise DataMismatch(
            f"{what}: the stored predictions ({len(predictions)} rows) do not match the {len(examples)} examples "
            f"they are joined to by id ({missing} ids missing, or in another order); the data changed under a "
            "cache entry; fix: rerun with cache.force_retrain=true, or prune the cache "
            "(python -m w2s_lightning.cache prune --all)"
        )
    return predictions.reset_index(drop=True)
