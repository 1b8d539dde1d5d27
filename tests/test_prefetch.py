"""The strong probe's features computed on a background thread while the weak model trains
(`prefetch_features`): the same results as without it, the stages take what it computed, its
errors reach the stage that needs its work, no draw from the global generators, and when it is on."""

from __future__ import annotations

import gc
import json
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from w2s_lightning import prefetch, stages, threads
from w2s_lightning.cache import StageCache
from w2s_lightning.checks import check_config
from w2s_lightning.data.splits import make_splits
from w2s_lightning.errors import ConfigError, TrainingDiverged
from w2s_lightning.experiment import Experiment
from w2s_lightning.methods.features import frozen_inputs
from w2s_lightning.methods.supervisor import WeakSupervisor
from w2s_lightning.models.system import FeatureSystem
from w2s_lightning.pipeline import run

from .helpers import compose_cfg, loaded_probe

STAGES = ("weak", "ceiling", "student")


def outcome(root: Path) -> dict:
    results = json.loads((root / "results.json").read_text())
    scores = {stage: {k: results[stage][k] for k in ("acc", "auroc", "ece", "key")} for stage in STAGES}
    return {**scores, "pgr": results["pgr"]}


def cached(cache: Path) -> dict:
    """Every prediction and feature file of a stage cache's stages, by path (not the run records)."""
    files = {}
    for path in sorted(p for p in cache.glob("*/*/*") if p.parts[-3] != "run"):
        name = str(path.relative_to(cache))
        if path.suffix == ".parquet":
            files[name] = pd.read_parquet(path)
        elif path.suffix == ".pt":
            files[name] = torch.load(path)
    return files


def test_a_run_with_prefetch_gives_what_a_run_without_it_gives(tmp_path, saved_gpt2, capsys):
    found, out = {}, {}
    for setting in ("false", "true"):
        cfg = compose_cfg(tmp_path / setting, *loaded_probe(saved_gpt2, f"prefetch_features={setting}"))
        run(cfg)
        found[setting] = (outcome(Path(cfg.paths.output_dir)), cached(Path(cfg.paths.cache_dir)))
        out[setting] = capsys.readouterr().out
    assert found["true"][0] == found["false"][0]
    files = found["false"][1]
    assert found["true"][1].keys() == files.keys() and sum(n.startswith("features/") for n in files) == 3
    for name, value in files.items():  # every prediction and every feature, bit for bit
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(found["true"][1][name], value, check_exact=True)
        else:
            assert torch.equal(found["true"][1][name], value), name
    # With it, the background computed test and validation, the ceiling B (its training split).
    assert out["false"].count("ceiling  features") == 3 and "strong   features" not in out["false"]
    assert out["true"].count("ceiling  features") == 1
    assert "strong   features  96 examples" in out["true"] and "strong   features  32 examples" in out["true"]


@pytest.mark.parametrize(
    "overrides",
    [("refine=knn", "refine.k=10"), ("ceiling_split=a",)],
    ids=["a-refiner-reads-B-and-validation-first", "the-ceiling-trains-on-A"],
)
def test_other_readers_and_orders_take_the_same_features(tmp_path, saved_gpt2, overrides):
    """A refiner that reads validation before the ceiling; a ceiling on A, which leaves B to the
    background."""
    found = {}
    for setting in ("false", "true"):
        cfg = compose_cfg(tmp_path / setting, *loaded_probe(saved_gpt2, f"prefetch_features={setting}", *overrides))
        run(cfg)
        found[setting] = (outcome(Path(cfg.paths.output_dir)), cached(Path(cfg.paths.cache_dir)))
    assert found["true"][0] == found["false"][0]
    for name, value in found["false"][1].items():
        if name.startswith("features/"):
            assert torch.equal(found["true"][1][name], value), name


def test_an_error_in_the_background_fails_the_stage_that_needs_its_work(tmp_path, saved_gpt2, monkeypatch):
    real_step = FeatureSystem.predict_step

    def nan_in_the_background(self, batch, batch_idx):
        index, features = real_step(self, batch, batch_idx)
        if threading.current_thread().name.startswith("w2s-features"):
            features = torch.full_like(features, float("nan"))
        return index, features

    monkeypatch.setattr(FeatureSystem, "predict_step", nan_in_the_background)
    cfg = compose_cfg(tmp_path, *loaded_probe(saved_gpt2, "prefetch_features=true"))
    with pytest.raises(TrainingDiverged, match="non-finite features"):
        run(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["status"] == "failed" and results["failed_stage"] == "ceiling"
    # Only B's features, which the ceiling computed itself: none of the background's.
    assert len(list(Path(cfg.paths.cache_dir).glob("features/*/features.pt"))) == 1
    assert not [t for t in threading.enumerate() if t.name.startswith("w2s-features")]  # the thread is gone


def test_a_failed_run_stops_the_background_at_its_next_batch(tmp_path, saved_gpt2, monkeypatch):
    """Ctrl-C or a scheduler's SIGTERM must not wait for features nobody will read."""
    batches, real_step = [], FeatureSystem.predict_step

    def slow_step(self, batch, batch_idx):
        batches.append(batch_idx)
        time.sleep(0.2)
        return real_step(self, batch, batch_idx)

    def weak_stage_fails(self, exp):
        time.sleep(0.3)  # the background pass is under way
        raise KeyboardInterrupt

    monkeypatch.setattr(FeatureSystem, "predict_step", slow_step)
    monkeypatch.setattr(WeakSupervisor, "__call__", weak_stage_fails)
    cfg = compose_cfg(tmp_path, *loaded_probe(saved_gpt2, "prefetch_features=true", "strong_model.eval_batch_size=8"))
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert 1 <= len(batches) < 12  # test has 96 texts, 12 batches: it stopped after the first few
    left = [p.name for p in Path(cfg.paths.cache_dir).glob("features/*") if p.is_dir()]
    assert not left  # no entry, not even a temporary (the lock's file stays, free, as every lock's does)
    assert not [t for t in threading.enumerate() if t.name.startswith("w2s-features")]


def test_every_encoder_is_let_go_once_its_features_are_done(tmp_path, saved_gpt2, monkeypatch):
    """Two copies of a large backbone (the background's and the ceiling's) must not outlive their
    work: each is freed when its last feature is computed, not when the collector next runs."""
    built, real_build = [], FeatureSystem.build

    def build(self):
        encoder = real_build(self)
        built.append(weakref.ref(encoder))
        return encoder

    monkeypatch.setattr(FeatureSystem, "build", build)
    gc.disable()
    try:
        run(compose_cfg(tmp_path, *loaded_probe(saved_gpt2, "prefetch_features=true")))
        assert len(built) == 2 and all(ref() is None for ref in built)  # the background's and the ceiling's
    finally:
        gc.enable()


def test_features_draw_nothing_from_the_global_generators(tmp_path, saved_gpt2):
    """What lets them run beside a stage that trains: its draws are the ones it makes alone."""
    cfg = compose_cfg(tmp_path, *loaded_probe(saved_gpt2))
    splits = make_splits(instantiate(cfg.dataset.loader, _partial_=True)(), cfg.dataset, cfg.seed)
    exp = Experiment(cfg, splits, tmp_path / "run", "xent")
    inputs = frozen_inputs(exp, cfg.strong_model)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    frame = exp.unlabelled("test")
    feats = inputs.features(frame, inputs.encode(frame, "test"))
    assert feats.shape == (96, 48) and not inputs.feature_entries[0].cached
    assert torch.equal(torch.get_rng_state(), before)


def test_stage_cache_run_takes_an_entry_begun_elsewhere(tmp_path):
    cache, calls, gate = StageCache(tmp_path), [], threading.Event()

    def compute(folder: Path) -> dict:
        gate.wait(5)
        calls.append(threading.current_thread().name)
        return {"n": 1}

    with ThreadPoolExecutor(1, "elsewhere") as executor:
        cache.start("features", "k1", compute, executor)
        gate.set()
        result = cache.run("features", "k1", compute)  # waits for the other thread's, never computes
    assert calls == ["elsewhere_0"] and not result.cached and result.record["n"] == 1
    assert cache.run("features", "k1", compute).cached and calls == ["elsewhere_0"]

    def fail(folder: Path) -> dict:
        raise TrainingDiverged("boom")

    with ThreadPoolExecutor(1) as executor:
        cache.start("features", "k2", fail, executor)
        with pytest.raises(TrainingDiverged, match="boom"):
            cache.run("features", "k2", compute)
    assert not cache.path("features", "k2").exists()


def test_thread_budgets_are_per_thread():
    """A background thread's torch thread count and `use_threads` budget are its own."""
    seen = {}

    def background():
        torch.set_num_threads(1)
        with threads.use_threads("auto", threads.LARGE) as count:
            seen["background"] = count
            barrier.wait(5)
            barrier.wait(5)

    barrier = threading.Barrier(2)
    before = torch.get_num_threads()
    worker = threading.Thread(target=background)
    worker.start()
    barrier.wait(5)  # the background thread is inside its block now
    with threads.use_threads("auto", threads.LARGE) as count:
        seen["main"] = count
    barrier.wait(5)
    worker.join()
    assert seen == {"background": 1, "main": threads.process_cores()}
    assert torch.get_num_threads() == before


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(prefetch, "process_cores", lambda: 2)


ON = -1  # stands for "on": the thread count of the caller


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ((), ON),  # a small weak model on a CPU, a core to spare
        (("prefetch_features=false",), 0),
        (("trainer.accelerator=gpu",), 0),  # auto stays off on accelerators
        (("trainer.accelerator=gpu", "prefetch_features=true"), ON),
        (("threads=2",), 0),
        (("weak_model=minilm_l6",), 0),  # a weak model that takes every core itself
        (("strong_model.linear_probe=false",), 0),  # nothing to prefetch
        (("strong_model.pretrained=model_type:gpt2", "prefetch_features=true"), 0),  # weights drawn: the stage's
    ],
)
def test_when_the_features_are_prefetched(tmp_path, saved_gpt2, two_cores, overrides, expected):
    cfg = compose_cfg(tmp_path, *loaded_probe(saved_gpt2), *overrides)
    expected = torch.get_num_threads() if expected == ON else expected
    assert prefetch.prefetch_threads(cfg, cfg.strong_model) == expected


def test_auto_needs_a_core_to_spare(tmp_path, saved_gpt2, monkeypatch):
    monkeypatch.setattr(prefetch, "process_cores", lambda: 1)
    cfg = compose_cfg(tmp_path, *loaded_probe(saved_gpt2))
    assert prefetch.prefetch_threads(cfg, cfg.strong_model) == 0
    cfg.prefetch_features = True
    assert prefetch.prefetch_threads(cfg, cfg.strong_model) == torch.get_num_threads()


def test_the_background_extracts_on_the_threads_the_stage_would(tmp_path, saved_gpt2, monkeypatch):
    """The same kernels on the same thread count: the same bits for every model."""
    seen = {}
    real = stages.run_predict

    def spy(trainer, system, *args, **kwargs):
        seen.setdefault(threading.current_thread().name.startswith("w2s-features"), set()).add(torch.get_num_threads())
        return real(trainer, system, *args, **kwargs)

    monkeypatch.setattr(stages, "run_predict", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run(compose_cfg(tmp_path, *loaded_probe(saved_gpt2, "prefetch_features=true")))
    finally:
        torch.set_num_threads(before)
    assert seen[True] == {2} and 2 in seen[False]  # background (features) and the stages' own passes


@pytest.mark.parametrize(("ceiling_split", "ahead"), [("b", ["test", "val"]), ("a", ["b", "test", "val"])])
def test_the_background_leaves_the_ceilings_training_split_and_starts_with_the_least_urgent(ceiling_split, ahead):
    assert prefetch.splits_ahead(OmegaConf.create({"ceiling_split": ceiling_split})) == ahead


def test_a_bad_setting_fails_at_start_up(tmp_path):
    cfg = compose_cfg(tmp_path, "prefetch_features=sometimes")
    with pytest.raises(ConfigError, match="prefetch_features=sometimes: must be auto, true or false"):
        check_config(cfg)
