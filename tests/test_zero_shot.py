"""Zero-shot labels (`labels=zero_shot`): mechanics on tiny random models, the pipeline end to
end, and one real check that the similarity mode works with the embedded MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from w2s_lightning.config import model_entry
from w2s_lightning.data.splits import make_splits
from w2s_lightning.errors import ConfigError
from w2s_lightning.experiment import Experiment
from w2s_lightning.methods.zero_shot import ZeroShot
from w2s_lightning.metrics import binary_metrics
from w2s_lightning.pipeline import run

CPU = torch.device("cpu")


def experiment(cfg) -> Experiment:
    splits = make_splits(instantiate(cfg.dataset.loader, _partial_=True)(), cfg.dataset, cfg.seed)
    return Experiment(cfg, splits, Path(cfg.paths.output_dir), "xent")


@pytest.mark.parametrize(("model", "mode"), [("tiny_gpt2", "lm"), ("tiny_bert", "similarity")])
def test_labels_every_split_once_in_order_and_caches(make_cfg, model, mode):
    exp = experiment(make_cfg(f"strong_model={model}"))
    labels = ZeroShot()(exp)
    assert labels.stages[0].record["mode"] == mode and not labels.stages[0].cached
    for split in ("b", "val", "test"):
        frame = getattr(labels, split)
        assert frame["id"].tolist() == getattr(exp.splits, split)["id"].tolist()
        assert ((frame["prob"] > 0) & (frame["prob"] < 1)).all()
    assert (labels.b["prob"] > 0.5).mean() == pytest.approx(0.5, abs=0.02)  # centred on B's median

    again = ZeroShot()(exp)
    assert again.stages[0].cached and again.key == labels.key
    pd.testing.assert_frame_equal(again.test, labels.test)
    assert ZeroShot(center=False)(exp).key != labels.key


def test_lm_mode_needs_a_decoder(make_cfg):
    with pytest.raises(ConfigError, match="not a decoder"):
        ZeroShot(mode="lm").logits(make_cfg("strong_model=tiny_bert").strong_model, {}, CPU)


def test_pipeline_with_zero_shot_labels_writes_results(make_cfg):
    cfg = make_cfg("labels=zero_shot")
    run(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["status"] == "done" and results["method"] == "zero_shot"
    for side in ("weak", "ceiling", "student"):
        assert 0 <= results[side]["acc"] <= 1
    assert results["weak"]["train_seconds"] == 0.0  # nothing trained


POSITIVE = [
    "I love my self-driving car, it is amazing",
    "Autonomous vehicles will make our roads so much safer. Can't wait!",
    "Just rode in a driverless taxi and it was fantastic",
    "Self-driving cars are the best invention of the decade",
    "So excited that autonomous cars are finally coming to my city",
    "Driverless cars will give blind people their freedom back. Wonderful news",
    "My commute is relaxing now that the car drives itself. Love it",
    "Great to see self-driving cars getting better every year",
    "Autonomous cars are awesome, I trust them more than human drivers",
    "Happy to let the car drive while I read. The future is great",
]
NEGATIVE = [
    "I hate self-driving cars, they are terrifying",
    "Autonomous vehicles are a disaster waiting to happen",
    "I would never trust a driverless car with my family",
    "Self-driving cars are dangerous and should be banned",
    "Another autonomous car crash. This technology is awful",
    "Driverless cars will kill people and nobody will be responsible",
    "I'm scared of robot cars on the highway. No thanks",
    "Self-driving cars are a terrible waste of money",
    "Autonomous cars are creepy and I don't want them near my kids",
    "Worst idea ever: cars with no driver. Horrible",
]


def test_similarity_mode_of_the_real_minilm_beats_chance():
    frame = pd.DataFrame({"id": range(20), "text": POSITIVE + NEGATIVE})
    truth = np.array([1] * len(POSITIVE) + [0] * len(NEGATIVE))
    mode, logits, _ = ZeroShot().logits(model_entry("minilm_l6_probe"), {"x": frame}, CPU)
    assert mode == "similarity"
    centred = logits["x"] - np.median(logits["x"])  # as `center` does, this set standing in for B
    scores = binary_metrics(1 / (1 + np.exp(-centred)), truth)
    # Chance is 0.5 for both; by luck, AUROC >= 0.9 on 10 + 10 has p ~ 0.001, 16 of 20 right p ~ 0.01.
    assert scores["auroc"] >= 0.9 and scores["acc"] >= 0.8, scores
