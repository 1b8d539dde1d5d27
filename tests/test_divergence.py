"""A diverged stage is an error, never a result: it fails with the stage, step and learning
rate, caches nothing, and leaves results.json saying "failed"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from w2s_lightning import stages
from w2s_lightning.errors import TrainingDiverged
from w2s_lightning.pipeline import run


def finished_entries(cfg) -> set[str]:
    return {p.parent.parent.name for p in Path(cfg.paths.cache_dir).rglob("record.json")}


def test_a_nan_loss_fails_the_stage_and_caches_nothing(make_cfg):
    cfg = make_cfg("strong_model.lr=1e6")
    with pytest.raises(
        TrainingDiverged,
        match=r"stage ceiling: the training loss of tiny_gpt2 is nan at step \d+ "
        r"\(learning rate .*strong_model.lr=1000000.0\).*fix: lower strong_model.lr",
    ):
        run(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["status"] == "failed" and results["failed_stage"] == "ceiling"
    assert "pgr" not in results and "strong_model.lr" in results["error"]
    assert finished_entries(cfg) == {"weak"}  # the weak stage finished before; nothing of the ceiling
    assert not list(Path(cfg.paths.cache_dir).glob("ceiling/.*tmp*"))


def test_non_finite_predictions_fail_the_stage(make_cfg, monkeypatch):
    real = stages.run_predict

    def poisoned(trainer, system, examples, batch_size, pad_id):
        probs = real(trainer, system, examples, batch_size, pad_id)
        return probs if system.predict_features else np.full_like(probs, np.nan)

    monkeypatch.setattr(stages, "run_predict", poisoned)
    cfg = make_cfg()
    with pytest.raises(TrainingDiverged, match=r"stage weak: \d+ of \d+ predictions on b are not finite"):
        run(cfg)
    assert finished_entries(cfg) == set()
    assert json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())["status"] == "failed"
