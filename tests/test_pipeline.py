"""The real pipeline end to end on tiny models: artifacts, cache behaviour, pair skipping."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from w2s_lightning.cache import StageCache
from w2s_lightning.pipeline import run

from .helpers import compose_cfg


def read_results(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """The base tiny experiment, trained once per module: its results and a filled cache."""
    cfg = compose_cfg(tmp_path_factory.mktemp("base"))
    run(cfg)
    return cfg


def test_experiment_writes_results_labels_and_disjoint_splits(make_cfg):
    cfg = make_cfg("logger=csv")
    returned = run(cfg)
    out = Path(cfg.paths.output_dir)
    results = read_results(cfg)

    assert results["status"] == "done"
    for stage in ("weak", "ceiling", "student"):
        assert 0.0 <= results[stage]["acc"] <= 1.0
        assert 0.0 <= results[stage]["auroc"] <= 1.0
        assert results[stage]["cached"] is False
    assert 0.0 <= results["student"]["agreement"] <= 1.0
    w, s, c = (results[k]["acc"] for k in ("weak", "student", "ceiling"))
    assert results["pgr"] == (pytest.approx((s - w) / (c - w)) if c > w else None)
    assert returned == results["student"]["val_weak_acc"]  # a validation score, never a test number

    labels = pd.read_parquet(out / "weak_labels.parquet")
    assert list(labels.columns) == ["id", "weak_prob", "gt_label"]
    assert len(labels) == cfg.dataset.n_strong
    assert labels["weak_prob"].between(0, 1).all()

    saved = json.loads((out / "splits.json").read_text())
    sizes = {"a": cfg.dataset.n_weak, "b": cfg.dataset.n_strong, "val": cfg.dataset.n_val, "test": cfg.dataset.n_test}
    splits = {k: set(saved[k]) for k in sizes}
    assert {k: len(v) for k, v in splits.items()} == sizes
    names = list(splits)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not splits[first] & splits[second], f"{first} and {second} overlap"
            assert not set(saved["items"][first]) & set(saved["items"][second]), f"{first} and {second} share items"
    assert set(labels["id"]) == splits["b"]

    # One CSV log per stage with its training and validation curves; the metrics log holds every
    # stage's test scores (only the metrics step reads test labels).
    for stage in ("weak", "ceiling", "student"):
        metrics = pd.read_csv(out / "csv" / stage / "metrics.csv")
        assert f"{stage}/val/acc" in metrics.columns
        assert f"{stage}/train/loss" in metrics.columns
    final = pd.read_csv(out / "csv" / "metrics" / "metrics.csv")
    assert {"weak/test/acc", "ceiling/test/acc", "student/test/acc"} <= set(final.columns)
    assert "pgr" in final.columns or results["pgr"] is None


def test_rerun_reuses_every_stage_with_identical_outputs(make_cfg, base_run):
    second = make_cfg(run="second")
    shutil.copytree(base_run.paths.cache_dir, second.paths.cache_dir)
    run(second)
    a, b = read_results(base_run), read_results(second)
    for stage in ("weak", "ceiling", "student"):
        assert b[stage]["cached"] is True
        assert b[stage]["key"] == a[stage]["key"]
        assert b[stage]["acc"] == a[stage]["acc"] and b[stage]["auroc"] == a[stage]["auroc"]
    assert b["pgr"] == a["pgr"]
    labels_a = pd.read_parquet(Path(base_run.paths.output_dir) / "weak_labels.parquet")
    labels_b = pd.read_parquet(Path(second.paths.output_dir) / "weak_labels.parquet")
    pd.testing.assert_frame_equal(labels_a, labels_b)


def test_uncached_rerun_reproduces_the_same_numbers(make_cfg, base_run):
    """Seeding makes a stage's result a function of its config, which is what makes
    the cache (and resuming a killed sweep) return what a fresh run would."""
    again = make_cfg("cache.enabled=false")
    run(again)
    a, b = read_results(base_run), read_results(again)
    for stage in ("weak", "ceiling", "student"):
        assert b[stage]["cached"] is False
        assert b[stage]["key"] == a[stage]["key"]
        assert b[stage]["acc"] == a[stage]["acc"]
        assert b[stage]["auroc"] == pytest.approx(a[stage]["auroc"], abs=1e-12)


@pytest.mark.parametrize(
    ("override", "missed"),
    [
        ("weak_model.lr=0.002", {"weak", "student"}),  # the student reads the weak labels
        ("strong_model.lr=0.002", {"ceiling", "student"}),
        ("seed=1", {"weak", "ceiling", "student"}),
        ("dataset.n_weak=80", {"weak", "ceiling", "student"}),  # B is drawn after A, so it moves too
        ("loss=logconf", {"student"}),
        ("logger=csv", set()),
        ("trainer.enable_progress_bar=false", set()),
        ("name=another_study", set()),
        ("strong_model.notes=measured_on_a_100", set()),
    ],
)
def test_cache_misses_exactly_when_a_relevant_setting_changes(make_cfg, base_run, override, missed):
    changed = make_cfg(override, run="changed")
    shutil.copytree(base_run.paths.cache_dir, changed.paths.cache_dir)
    run(changed)
    results = read_results(changed)
    assert {s for s in ("weak", "ceiling", "student") if not results[s]["cached"]} == missed


def test_force_retrain_replaces_entries(make_cfg, base_run):
    forced = make_cfg("cache.force_retrain=true", run="forced")
    shutil.copytree(base_run.paths.cache_dir, forced.paths.cache_dir)
    run(forced)
    results = read_results(forced)
    assert not any(results[s]["cached"] for s in ("weak", "ceiling", "student"))
    cache = StageCache(forced.paths.cache_dir)
    assert cache.lookup("weak", results["weak"]["key"]) is not None
    assert not list(Path(forced.paths.cache_dir).glob("*/.*.tmp-*")), "a temporary folder was left behind"


def test_pairs_whose_strong_model_is_not_larger_are_skipped_visibly(make_cfg, caplog):
    cfg = make_cfg("weak_model=tiny_gpt2", "strong_model=tiny_bert")
    assert run(cfg) is None  # a sweeper reads None as a failed trial
    results = read_results(cfg)
    assert results["status"] == "skipped"
    assert "not larger" in results["reason"]
    assert "skipping pair" in caplog.text
    kept = make_cfg("weak_model=tiny_gpt2", "strong_model=tiny_gpt2", "pairs.require_larger_strong=false", run="kept")
    run(kept)
    assert read_results(kept)["status"] == "done"


def test_ceiling_on_split_a_trains_on_the_weak_supervisors_data(make_cfg):
    cfg = make_cfg("ceiling_split=a")
    run(cfg)
    results = read_results(cfg)
    record = json.loads((Path(results["ceiling"]["cache_path"]) / "record.json").read_text())
    assert record["n_train"] == cfg.dataset.n_weak


def test_wandb_offline_runs_land_in_the_output_folder(make_cfg, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    cfg = make_cfg("logger=wandb", "name=w2s_test")
    run(cfg)
    runs = sorted((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    # One run per stage plus the experiment's metrics run.
    assert len(runs) == 4
    import wandb

    assert wandb.run is None, "a W&B run was left open"


def test_gradient_accumulation_matches_the_full_batch(make_cfg):
    """Micro-batches of 4 accumulate to the same update as one batch of 16, logconf's batch
    statistic included, so predictions agree up to float summation order."""
    # float32: bf16 rounds a sum of 4 micro-batches differently from one batch of 16.
    full = make_cfg("loss=logconf", "trainer.precision=32-true", run="full")
    micro = make_cfg("loss=logconf", "trainer.precision=32-true", "strong_model.micro_batch_size=4", run="micro")
    run(full)
    run(micro)
    probs = [
        pd.read_parquet(Path(read_results(c)["student"]["cache_path"]) / "test.parquet")["prob"] for c in (full, micro)
    ]
    assert probs[0].to_numpy() == pytest.approx(probs[1].to_numpy(), abs=1e-4)


def test_linear_probes_compute_each_models_features_once(make_cfg):
    probe = ("weak_model.linear_probe=true", "strong_model.linear_probe=true")
    first = make_cfg(*probe, run="first")
    run(first)
    features = sorted((Path(first.paths.cache_dir) / "features").glob("*/features.pt"))
    # weak model: A, val, B, test; strong model: B, val, test (the ceiling reuses the student's B).
    assert len(features) == 7
    stamps = {p: p.stat().st_mtime_ns for p in features}
    second = make_cfg(*probe, "loss=logconf", run="second")
    run(second)
    assert not read_results(second)["student"]["cached"]
    after = sorted((Path(first.paths.cache_dir) / "features").glob("*/features.pt"))
    assert {p: p.stat().st_mtime_ns for p in after} == stamps


@pytest.mark.parametrize(
    "kernel",
    [
        "strong_model.attn_implementation=eager",
        "strong_model.fused_activations=false",
        "strong_model.eval_batch_size=7",
    ],
)
def test_features_of_another_kernel_are_computed_not_read_from_the_cache(make_cfg, kernel):
    """The strong model's kernels, and the padding its batch size makes, change its features'
    rounding: features cached under one choice must never be read under the other."""
    probe = "strong_model.linear_probe=true"
    first = make_cfg(probe, run="first")
    run(first)
    folder = Path(first.paths.cache_dir) / "features"
    before = {p.parent.name for p in folder.glob("*/features.pt")}
    run(make_cfg(probe, kernel, run="second"))
    added = {p.parent.name for p in folder.glob("*/features.pt")} - before
    assert len(added) == 3  # the strong model's B, validation and test, computed again


def test_results_json_is_strict_json_with_null_for_undefined_numbers(tmp_path):
    from w2s_lightning.pipeline import write_results

    write_results(tmp_path, {"weak": {"auroc": float("nan")}, "pgr": float("inf"), "ok": 0.5})
    text = (tmp_path / "results.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}")) == {
        "weak": {"auroc": None},
        "pgr": None,
        "ok": 0.5,
    }
