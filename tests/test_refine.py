"""Refiners (`refine=knn|logreg|confidence`): their arithmetic on hand-made 2-D features, and the
real pipeline on tiny models: what results.json reports, the student's cache key, a cached rerun,
features shared with a linear probe, and no ground truth read."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from w2s_lightning.cache import StageResult
from w2s_lightning.data.splits import make_splits
from w2s_lightning.errors import ConfigError
from w2s_lightning.experiment import Experiment, Labels
from w2s_lightning.methods import Start, features
from w2s_lightning.methods.confidence import ConfidenceFilter, drop_lowest
from w2s_lightning.methods.knn import KnnRefinement, neighbour_mean
from w2s_lightning.methods.logreg import LogregRefinement, cross_fitted, item_folds
from w2s_lightning.pipeline import run

from .helpers import compose_cfg

# Six points on the unit circle: two clusters of three, 10 degrees apart within a cluster.
ANGLES = np.radians([0, 10, 20, 90, 100, 110])
CIRCLE = torch.tensor(np.stack([np.cos(ANGLES), np.sin(ANGLES)], 1), dtype=torch.float32)
WEAK = torch.tensor([0.9, 0.8, 0.1, 0.2, 0.3, 0.1])


def test_knn_label_is_the_mean_weak_label_of_the_k_nearest_other_examples():
    own_item = torch.arange(6)
    smoothed = neighbour_mean(CIRCLE, CIRCLE, WEAK, 2, "cosine", own_item, own_item)
    assert smoothed.tolist() == pytest.approx([0.45, 0.5, 0.85, 0.2, 0.15, 0.25])

    # Points 0 and 1 are one item: each skips the other and reaches the next cluster's 90 degrees.
    paired = torch.tensor([0, 0, 1, 2, 3, 4])
    assert neighbour_mean(CIRCLE, CIRCLE, WEAK, 2, "cosine", paired, paired)[:2].tolist() == pytest.approx([0.15] * 2)

    # Mixed with its own label; validation (5 degrees) averages its nearest examples of B.
    val = torch.tensor([[np.cos(np.radians(5)), np.sin(np.radians(5))]], dtype=torch.float32)
    new_b, new_val = KnnRefinement(k=2, self_weight=0.5).predict(
        None, CIRCLE, WEAK, np.arange(6), val, torch.tensor([0.2])
    )
    assert new_b == pytest.approx(0.5 * WEAK.numpy() + 0.5 * smoothed.numpy())
    assert new_val == pytest.approx([0.5 * 0.2 + 0.5 * 0.85])


def test_knn_filter_drops_the_weak_labels_farthest_from_their_neighbours(monkeypatch):
    feature_key = {"key": "f1"}  # the features' cache entry, as strong_features would report it
    entry = lambda: StageResult({**feature_key, "train_seconds": 0.0}, Path("."), True)  # noqa: E731
    monkeypatch.setattr(features, "strong_features", lambda exp, spec, splits: ({"b": CIRCLE}, [entry()]))
    weak = hand_labels(WEAK.tolist()[:6])
    frames = {"b": weak.b[["id"]].assign(text="t", group=weak.b["id"]), "val": weak.val[["id"]]}
    exp = SimpleNamespace(unlabelled=lambda split: frames[split], cfg=SimpleNamespace(seed=0))
    refiner = KnnRefinement(k=2, relabel=False, drop=1 / 3)
    refined = refiner(exp, weak, Start(None))
    # |neighbours' mean - weak| = 0.45, 0.3, 0.75, 0, 0.15, 0.15: the two largest go, labels stay.
    assert refined.b["keep"].tolist() == [False, True, False, True, True, True]
    assert refined.b["prob"].tolist() == weak.b["prob"].tolist() and refined.val is weak.val
    assert refined.info == {"relabelled": 0, "filtered": 2, "mean_shift": 0.0}
    feature_key["key"] = "f2"  # other features (another strong model): other labels
    assert refiner(exp, weak, Start(None)).key != refined.key


def test_knn_metric_cosine_ignores_the_norm_euclidean_does_not():
    x, weak = torch.tensor([[1.0, 0.0], [100.0, 1.0], [0.0, 1.0]]), torch.tensor([0.5, 0.9, 0.1])
    items = torch.arange(3)
    assert neighbour_mean(x, x, weak, 1, "cosine", items, items)[0] == pytest.approx(0.9)
    assert neighbour_mean(x, x, weak, 1, "euclidean", items, items)[0] == pytest.approx(0.1)


def test_logreg_cross_fitting_relabels_a_flipped_point_by_its_cluster():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20, 2, generator=gen) + 3, torch.randn(20, 2, generator=gen) - 3])
    weak = torch.tensor([0.9] * 20 + [0.1] * 20)
    weak[0] = 0.1  # a weak error inside the positive cluster
    groups = np.arange(40)
    new, val = cross_fitted(x, weak, item_folds(groups, 5, seed=0), l2=1e-3, max_iter=100, val=x[:1])
    assert new[0] > 0.5  # its own flipped label was never fitted by the probe that relabels it
    assert (new[:20] > 0.5).all() and (new[20:] < 0.5).all()
    assert val[0] > 0.5  # the mean of the five fold probes


def test_item_folds_keep_an_items_examples_together():
    groups = np.repeat(np.arange(10), 3)
    fold = item_folds(groups, 5, seed=1)
    assert all(len(set(fold[groups == g])) == 1 for g in range(10))
    assert np.bincount(fold).tolist() == [6] * 5


def hand_labels(probs) -> Labels:
    b = pd.DataFrame({"id": [f"b{i}" for i in range(len(probs))], "prob": probs})
    return Labels(b=b, val=pd.DataFrame({"id": ["v0"], "prob": [0.7]}), test=None, key="weak-key")


def test_confidence_drops_exactly_the_configured_fraction_least_confident_first():
    probs = [0.5, 0.9, 0.45, 0.1, 0.6, 0.99, 0.52, 0.3, 0.7, 0.0]
    weak = hand_labels(probs)
    frames = {"b": weak.b[["id"]].assign(text="t", group=weak.b["id"])}
    exp = SimpleNamespace(unlabelled=lambda split: frames[split])
    refined = ConfidenceFilter(fraction=0.3)(exp, weak, Start(None))
    assert set(refined.b["id"][~refined.b["keep"]]) == {"b0", "b6", "b2"}  # |p - 0.5| = 0, 0.02, 0.05
    assert refined.b["prob"].tolist() == probs and refined.val is weak.val
    assert refined.info["filtered"] == 3 and refined.key != weak.key
    assert drop_lowest(np.zeros(96), 0.2).sum() == 96 - 19


@pytest.mark.parametrize(
    "build",
    [
        lambda: KnnRefinement(relabel=False),
        lambda: KnnRefinement(k=0),
        lambda: LogregRefinement(folds=1),
        lambda: LogregRefinement(drop=1.0),
        lambda: ConfidenceFilter(fraction=1.0),
    ],
)
def test_refiner_settings_out_of_range_fail_at_start_up(build):
    with pytest.raises(ConfigError, match="fix:"):
        build()


# The real pipeline on tiny models, all runs sharing one stage cache.


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("refine")


def pipeline(root: Path, name: str, *overrides: str) -> dict:
    cfg = compose_cfg(root, *overrides)
    cfg.paths.output_dir = str(root / name)
    run(cfg)
    return json.loads((root / name / "results.json").read_text())


def entries(root: Path, stage: str = "*") -> set[str]:
    return {str(p.relative_to(root)) for p in (root / "cache").glob(f"{stage}/*") if p.is_dir()}


@pytest.fixture(scope="module")
def plain(root) -> dict:
    return pipeline(root, "plain")


def test_knn_run_reports_refined_labels_and_a_new_student_and_reruns_from_the_cache(root, plain):
    first = pipeline(root, "knn", "refine=knn", "refine.k=10")
    refined = first["refined_labels"]
    assert (refined["kept"], refined["dropped"], refined["relabelled"]) == (96, 0, 96)
    assert 0 <= refined["flipped"] <= 96 and 0.0 <= refined["acc"] <= 1.0
    assert first["method"] == "weak+knn(k=10)"
    assert first["weak"]["cached"] and first["ceiling"]["cached"]  # shared with the plain run
    assert not first["student"]["cached"] and first["student"]["key"] != plain["student"]["key"]
    assert len(entries(root, "features")) == 2  # B and validation of the strong model

    before = entries(root)
    again = pipeline(root, "knn_again", "refine=knn", "refine.k=10")
    assert all(again[s]["cached"] for s in ("weak", "ceiling", "student"))
    assert again["refined_labels"] == refined and again["student"]["key"] == first["student"]["key"]
    assert entries(root) == before  # the features were reused too


def test_a_linear_probe_reads_the_features_the_refiner_computed(root, plain):
    pipeline(root, "knn_probe", "refine=knn", "refine.k=10", "strong_model.linear_probe=true")
    assert len(entries(root, "features")) == 3  # B, validation and test, each once: probe and refiner share them


@pytest.mark.parametrize(
    ("overrides", "dropped"),
    [(("refine=logreg", "refine.folds=3", "refine.drop=0.1"), 10), (("refine=confidence",), 19)],
    ids=["logreg", "confidence"],
)
def test_filtering_refiners_drop_their_share_and_the_student_trains_on_the_rest(root, plain, overrides, dropped):
    results = pipeline(root, overrides[0].split("=")[1], *overrides)
    refined = results["refined_labels"]
    assert (refined["kept"], refined["dropped"], refined["filtered"]) == (96 - dropped, dropped, dropped)
    stage = next((root / "cache" / "student").glob(f"{results['student']['key']}/record.json"))
    assert json.loads(stage.read_text())["n_train"] == 96 - dropped
    assert results["student"]["key"] != plain["student"]["key"]


def test_refiners_never_read_ground_truth(root, plain, monkeypatch):
    cfg = compose_cfg(root)
    splits = make_splits(instantiate(cfg.dataset.loader, _partial_=True)(), cfg.dataset, cfg.seed)
    exp = Experiment(cfg, splits, root / "leak", "xent")
    seen, unlabelled = [], Experiment.unlabelled
    monkeypatch.setattr(Experiment, "unlabelled", lambda self, split: seen.append(unlabelled(self, split)) or seen[-1])
    rng = np.random.default_rng(0)
    weak = Labels(
        b=pd.DataFrame({"id": splits.b["id"], "prob": rng.uniform(size=len(splits.b))}),
        val=pd.DataFrame({"id": splits.val["id"], "prob": rng.uniform(size=len(splits.val))}),
        test=None,
        key="hand",
    )
    refiners = [KnnRefinement(k=5, drop=0.1), LogregRefinement(folds=2, max_iter=50), ConfidenceFilter()]
    start = Start(cfg.strong_model)
    before = [r(exp, weak, start) for r in refiners]
    for split in (splits.b, splits.val):
        split["label"] = 1 - split["label"]  # every ground-truth label flipped
    after = [r(exp, weak, start) for r in refiners]
    assert seen and not any("label" in frame for frame in seen)
    for x, y in zip(before, after):
        pd.testing.assert_frame_equal(x.b, y.b)
        pd.testing.assert_frame_equal(x.val, y.val)
        assert x.key == y.key
