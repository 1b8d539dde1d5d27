"""A, B, validation and test are disjoint by item: the examples made from one question (one per
option), and every question about one passage, land in one split, for every hub formatter and
for a local file with `group_column`."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from w2s_lightning.data.formatters import get_formatter
from w2s_lightning.data.sources import load_local
from w2s_lightning.data.splits import make_splits

from .test_hub_datasets import CONFIGS, NAMES, fixture_rows, load

COPIES = 20  # fixture rows are few; tagged copies give every formatter dozens of items


def tagged(value, tag: str):
    """Every text of a row made distinct per copy; short strings (answer keys such as "A" or
    "1", label fields) stay as they are so the row keeps its meaning."""
    if isinstance(value, dict):
        return {k: tagged(v, tag) for k, v in value.items()}
    if isinstance(value, list):
        return [tagged(v, tag) for v in value]
    if isinstance(value, str) and len(value) > 3:
        return f"{tag} {value}"
    return value


def grown_copy(tmp_path: Path, name: str) -> tuple[Path, dict[str, list[dict]]]:
    """A local copy whose train and test splits hold disjoint tagged copies of the fixture."""
    loader, rows = CONFIGS[name]["loader"], {}
    for split, tag in ((loader["train_split"], "t"), (loader["test_split"], "e")):
        rows[split] = [tagged(row, f"{tag}{k}") for k in range(COPIES) for row in fixture_rows(name)]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows[split]) + "\n")
    return tmp_path, rows


def split_of(splits) -> dict[str, str]:
    return {i: name for name, frame in splits.items() for i in frame["id"]}


@pytest.mark.parametrize("name", NAMES)
def test_no_item_of_a_hub_dataset_straddles_two_splits(name, tmp_path):
    path, rows = grown_copy(tmp_path, name)
    frames = load(name, local_path=str(path))
    sizes = {"n_weak": 8, "n_strong": 8, "n_val": 4, "n_test": 8, "max_overlap": 0.0}
    splits = make_splits(frames, OmegaConf.create({**CONFIGS[name], **sizes}), seed=0)
    where = split_of(splits)
    assert len(where) == sum(len(f) for _, f in splits.items()), "an example is in two splits"

    # Independently of the group column: the examples of one hub row, and the rows sharing the
    # formatter's declared item (a passage, a context), sit in one split.
    fmt = get_formatter(CONFIGS[name]["loader"]["formatter"])
    train_split = CONFIGS[name]["loader"]["train_split"]
    by_item = defaultdict(set)
    for example_id, split in where.items():
        if split == "test":
            continue
        index = int(example_id.rsplit("-", 2)[-2])
        by_item[fmt.item_of(rows[train_split][index], index)].add(split)
    straddling = {item: s for item, s in by_item.items() if len(s) > 1}
    assert not straddling, f"{name}: items in several splits: {straddling}"
    saved = {n: set(f["group"]) for n, f in splits.items()}
    assert not saved["a"] & saved["b"] and not saved["a"] & saved["val"] and not saved["b"] & saved["val"]


def test_a_passage_with_several_questions_is_one_item():
    quail = get_formatter("quail")
    first, second = fixture_rows("quail")[:2]
    assert first["context"] == second["context"] and first["question"] != second["question"]
    assert quail.item_of(first, 0) == quail.item_of(second, 1)


def test_a_local_file_keeps_the_rows_of_one_group_together(tmp_path):
    # 60 questions with 4 options each, one right; grouped by question.
    rows = [
        {"text": f"question {q} option {o}", "label": int(o == q % 4), "question": f"q{q}"}
        for q in range(60)
        for o in range(4)
    ]
    path = tmp_path / "mc.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    frames = load_local(str(path), group_column="question")
    cfg = OmegaConf.create(
        {"name": "mc", "balance": True, "holdout_fraction": 0.25, "test_seed": 0, "max_overlap": 0.0}
        | {"n_weak": 20, "n_strong": 20, "n_val": 10, "n_test": 20}
    )
    for seed in range(3):
        splits = make_splits(frames, cfg, seed=seed)
        groups = {name: set(frame["group"]) for name, frame in splits.items()}
        names = list(groups)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                assert not groups[first] & groups[second], f"seed {seed}: {first} and {second} share a question"
        assert {name: len(frame) for name, frame in splits.items()} == {"a": 20, "b": 20, "val": 10, "test": 20}


def test_without_group_column_each_row_is_its_own_item(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": [i % 2 for i in range(10)]}).to_csv(path)
    frame = load_local(str(path))["train"]
    assert frame["group"].tolist() == frame["id"].tolist()


def test_splits_json_records_the_items_of_each_split(tmp_path):
    rows = [{"text": f"q{q} o{o}", "label": int(o == 0), "q": q} for q in range(40) for o in range(2)]
    pd.DataFrame(rows).to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    cfg = OmegaConf.create(
        {"name": "d", "balance": False, "holdout_fraction": 0.25, "test_seed": 0, "max_overlap": 0.0}
        | {"n_weak": 10, "n_strong": 10, "n_val": 4, "n_test": 10}
    )
    splits = make_splits(load_local(str(tmp_path / "d.jsonl"), group_column="q"), cfg, seed=0)
    splits.save(tmp_path / "splits.json")
    saved = json.loads((tmp_path / "splits.json").read_text())
    assert saved["items"]["a"] == splits.a["group"].unique().tolist()
    assert saved["a"] == splits.a["id"].tolist()
