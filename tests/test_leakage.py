"""The duplicate and leakage guard: repeated texts and training texts found in test are dropped
and counted; more than `dataset.max_overlap` of them is an error that names the files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from w2s_lightning.data.leakage import normalise
from w2s_lightning.data.sources import load_local
from w2s_lightning.data.splits import make_splits
from w2s_lightning.errors import DatasetError


def cfg(**overrides):
    base = {"name": "mine", "balance": False, "holdout_fraction": 0.2, "test_seed": 0, "max_overlap": 0.01}
    return OmegaConf.create({**base, "n_weak": 40, "n_strong": 40, "n_val": 10, "n_test": 40, **overrides})


def write(path: Path, texts: list[str]) -> str:
    pd.DataFrame({"text": texts, "label": [i % 2 for i in range(len(texts))]}).to_json(
        path, orient="records", lines=True
    )
    return str(path)


def tweets(n: int, tag: str) -> list[str]:
    return [f"tweet {tag} number {i} about cars" for i in range(n)]


def test_normalising_ignores_case_whitespace_links_and_mentions():
    assert normalise("RT @bob: Self-driving cars   are HERE https://t.co/xyz") == normalise(
        "rt : self-driving cars are here"
    )
    assert normalise("cars are here") != normalise("cars are near")


def test_a_training_text_found_in_test_is_dropped_and_counted(tmp_path):
    test = tweets(100, "test")
    train = [*tweets(300, "train"), test[7].upper() + " http://x.y/z"]  # a near-copy of one test tweet
    frames = load_local(write(tmp_path / "train.jsonl", train), test_path=write(tmp_path / "test.jsonl", test))
    splits = make_splits(frames, cfg(), seed=0)
    assert splits.guard == {"repeated_train_texts": 0, "repeated_test_texts": 0, "train_texts_in_test": 1}
    trained = {normalise(t) for name, f in splits.items() if name != "test" for t in f["text"]}
    assert normalise(test[7]) not in trained


def test_a_test_file_that_overlaps_training_is_an_error_naming_both_files(tmp_path):
    test = tweets(100, "test")
    train_path = write(tmp_path / "train.jsonl", tweets(300, "train") + test[:5])
    test_path = write(tmp_path / "test.jsonl", test)
    with pytest.raises(
        DatasetError,
        match=r"5 training examples of dataset file .*train.jsonl share their text with "
        r"the test set dataset file .*test.jsonl.*dataset.max_overlap=0.01",
    ):
        make_splits(load_local(train_path, test_path=test_path), cfg(), seed=0)
    # Raising the threshold drops them and goes on.
    splits = make_splits(load_local(train_path, test_path=test_path), cfg(max_overlap=0.1), seed=0)
    assert splits.guard["train_texts_in_test"] == 5


def test_a_file_with_every_row_twice_is_an_error(tmp_path):
    path = write(tmp_path / "twice.jsonl", [t for t in tweets(200, "x") for _ in range(2)])
    with pytest.raises(DatasetError, match=r"200 of 400 examples \(50.0%\) of dataset file .*twice.jsonl repeat"):
        make_splits(load_local(path), cfg(), seed=0)


def test_near_duplicates_never_straddle_splits(tmp_path):
    texts = tweets(300, "x")
    texts[10] = "@someone " + texts[20].upper()  # the same tweet as row 20, but for case and a mention
    splits = make_splits(load_local(write(tmp_path / "d.jsonl", texts)), cfg(), seed=0)
    assert splits.guard["repeated_train_texts"] == 1
    seen = [normalise(t) for _, f in splits.items() for t in f["text"]]
    assert len(seen) == len(set(seen))


def test_results_json_counts_what_the_guard_dropped(make_cfg, tmp_path):
    from w2s_lightning.pipeline import run

    test = tweets(150, "test")
    train = [*tweets(400, "train"), test[0]]
    overrides = [
        "dataset=local",
        f"dataset.path={write(tmp_path / 'train.jsonl', train)}",
        f"dataset.test_path={write(tmp_path / 'test.jsonl', test)}",
        "dataset.n_weak=64",
        "dataset.n_strong=64",
        "dataset.n_val=16",
        "dataset.n_test=100",
    ]
    cfg_run = make_cfg(*overrides)
    run(cfg_run)
    results = json.loads((Path(cfg_run.paths.output_dir) / "results.json").read_text())
    assert results["data"]["guard"]["train_texts_in_test"] == 1
