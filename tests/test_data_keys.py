"""Stage keys include a fingerprint of the data each stage read, and predictions are joined to
examples by id: other data never meets a cached result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from w2s_lightning.data.splits import aligned
from w2s_lightning.errors import DataMismatch
from w2s_lightning.pipeline import run

SIZES = ["dataset.n_weak=48", "dataset.n_strong=48", "dataset.n_val=16", "dataset.n_test=48"]


def write_data(path: Path, edit: int | None = None) -> Path:
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    rows = [{"text": f"review {i}: the car was {words[i % 6]}", "label": int(i % 6 in (0, 2, 4))} for i in range(240)]
    if edit is not None:
        rows[edit]["text"] += " indeed"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return path


def stages(cfg) -> dict:
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    return {stage: (results[stage]["cached"], results[stage]["key"]) for stage in ("weak", "ceiling", "student")}


def test_an_edited_text_misses_the_cache_and_an_unchanged_copy_hits_it(make_cfg, tmp_path):
    first_file = write_data(tmp_path / "data.jsonl")
    first = make_cfg("dataset=local", f"dataset.path={first_file}", *SIZES, run="first")
    run(first)

    # The same data under another path: every stage is reused.
    copy = tmp_path / "elsewhere" / "data.jsonl"
    copy.parent.mkdir()
    shutil.copy(first_file, copy)
    same = make_cfg("dataset=local", f"dataset.path={copy}", *SIZES, run="same")
    run(same)
    assert all(cached for cached, _ in stages(same).values())
    assert [key for _, key in stages(same).values()] == [key for _, key in stages(first).values()]

    # One text of split B edited (every stage reads B): no stage is reused.
    in_b = int(json.loads((tmp_path / "first" / "splits.json").read_text())["b"][0].split("-")[1])
    edited_file = write_data(tmp_path / "edited.jsonl", edit=in_b)
    edited = make_cfg("dataset=local", f"dataset.path={edited_file}", *SIZES, run="edited")
    run(edited)
    assert not any(cached for cached, _ in stages(edited).values())


def test_predictions_joined_to_other_examples_are_an_error():
    examples = pd.DataFrame({"id": ["a", "b", "c"], "text": ["x", "y", "z"], "label": [0, 1, 0]})
    stored = pd.DataFrame({"id": ["a", "b", "c"], "prob": [0.1, 0.9, 0.2]})
    assert aligned(stored, examples, "weak labels")["prob"].tolist() == [0.1, 0.9, 0.2]
    for other in (stored.iloc[[1, 0, 2]], stored.iloc[:2], stored.assign(id=["a", "b", "d"])):
        with pytest.raises(DataMismatch, match=r"weak labels: the stored predictions .* cache.force_retrain=true"):
            aligned(other, examples, "weak labels")
