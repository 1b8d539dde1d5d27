"""Generative finetuning (`pretrain=generative`) on tiny models: the stage trains and saves a
backbone that loads, reads no test text, and moves the ceiling's and the student's keys."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file
from transformers import AutoModel

from w2s_lightning.data.splits import make_splits
from w2s_lightning.errors import TrainingDiverged
from w2s_lightning.experiment import Experiment
from w2s_lightning.methods import generative
from w2s_lightning.methods.generative import GenerativeFinetuning
from w2s_lightning.models.backbone import load_backbone, load_config
from w2s_lightning.pipeline import run

from .helpers import compose_cfg

# Random tiny weights learn visibly in one pass; 16 tokens a text keep the 30k-word LM head cheap.
FAST = GenerativeFinetuning(lr=1e-3, max_length=16)


def experiment(cfg) -> Experiment:
    splits = make_splits(instantiate(cfg.dataset.loader, _partial_=True)(), cfg.dataset, cfg.seed)
    return Experiment(cfg, splits, Path(cfg.paths.output_dir), "xent")


def saved_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.glob("*.safetensors"))))


@pytest.mark.parametrize(("model", "objective"), [("tiny_bert", "masked"), ("tiny_gpt2", "causal")])
def test_stage_finetunes_and_saves_a_backbone_that_loads(make_cfg, tmp_path, model, objective):
    # A checkpoint folder of the bare backbone, as the embedded MiniLM ships: the encoder's
    # masked-LM head is then missing from it and initialised fresh.
    original = tmp_path / "original"
    spec = make_cfg(f"strong_model={model}").strong_model
    AutoModel.from_config(load_config(spec)).save_pretrained(original)
    cfg = make_cfg(f"strong_model={model}", f"strong_model.pretrained={original}")
    start = FAST(experiment(cfg))

    entry = Path(cfg.paths.cache_dir) / "pretrain" / start.key
    record = json.loads((entry / "record.json").read_text())
    assert record["objective"] == objective
    assert record["texts"] == {"a": 96, "b": 96, "val": 32}
    assert bool(record["fresh_head_weights"]) == (objective == "masked")  # GPT-2 ties its head to wte
    assert start.spec.pretrained == str(entry / "backbone")
    assert start.spec.tokenizer == cfg.strong_model.tokenizer

    before, after = saved_weights(original), saved_weights(entry / "backbone")
    assert set(after) <= set(before)  # the backbone's own weights (BERT's unused pooler aside)
    changed = [name for name in after if not torch.equal(after[name], before[name])]
    assert len(changed) > len(after) // 2
    loaded = load_backbone(start.spec).state_dict()
    assert all(torch.equal(loaded[name], after[name]) for name in after)


def test_stage_never_reads_test_texts(make_cfg, monkeypatch):
    exp = experiment(make_cfg())
    seen = []

    def spy(tokenizer, texts, max_length):
        seen.extend(texts)
        raise KeyboardInterrupt  # stop before training: the texts are all this test needs

    monkeypatch.setattr(generative, "tokenize", spy)
    with pytest.raises(KeyboardInterrupt):
        FAST(exp)
    allowed = {t for s in ("a", "b", "val") for t in getattr(exp.splits, s)["text"]}
    assert set(seen) == allowed and len(seen) == 96 + 96 + 32
    assert not set(seen) & set(exp.splits.test["text"])


def test_non_finite_lm_loss_raises_and_caches_nothing(make_cfg):
    cfg = make_cfg()
    with pytest.raises(TrainingDiverged, match=r"stage pretrain.*fix: lower pretrain\.lr"):
        GenerativeFinetuning(lr=1e30, max_length=16)(experiment(cfg))
    assert not [p for p in (Path(cfg.paths.cache_dir) / "pretrain").iterdir() if not p.name.endswith(".lock")]


# A linear probe: its features must come from the finetuned backbone, so their key must move too.
PROBE = ("strong_model.linear_probe=true", "strong_model.lr=0.01")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny experiment without and with generative finetuning, into one cache."""
    root = tmp_path_factory.mktemp("generative")
    plain = compose_cfg(root, *PROBE)
    plain.paths.output_dir = str(root / "plain")
    run(plain)
    features = {p.name for p in (Path(plain.paths.cache_dir) / "features").iterdir() if p.is_dir()}
    tuned = compose_cfg(root, *PROBE, "pretrain=generative", "pretrain.lr=1e-3", "pretrain.max_length=16")
    tuned.paths.output_dir = str(root / "tuned")
    run(tuned)
    return plain, tuned, features


def results(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())


def test_pipeline_starts_ceiling_and_student_from_the_finetuned_backbone(runs):
    plain, tuned, plain_features = runs
    a, b = results(plain), results(tuned)
    assert b["status"] == "done" and b["method"] == "weak+generative(lr=0.001, max_length=16)"
    assert 0 <= b["ceiling"]["acc"] <= 1 and 0 <= b["student"]["acc"] <= 1
    assert b["weak"]["key"] == a["weak"]["key"]  # the weak side does not depend on the strong start
    for stage in ("ceiling", "student"):
        assert b[stage]["key"] != a[stage]["key"]
    features = {p.name for p in (Path(tuned.paths.cache_dir) / "features").iterdir() if p.is_dir()}
    assert features - plain_features and len(features) == 2 * len(plain_features)
    assert len([p for p in (Path(tuned.paths.cache_dir) / "pretrain").iterdir() if p.is_dir()]) == 1


def test_rerun_reuses_the_pretrain_stage(runs, monkeypatch):
    _, tuned, _ = runs

    def refuse(self, exp, workdir):
        raise AssertionError("the pretrain stage ran again")

    monkeypatch.setattr(GenerativeFinetuning, "finetune", refuse)
    again = copy.deepcopy(tuned)
    again.paths.output_dir = str(Path(tuned.paths.output_dir).parent / "again")
    run(again)
    first, second = results(tuned), results(again)
    for stage in ("ceiling", "student"):
        assert second[stage]["cached"] is True and second[stage]["key"] == first[stage]["key"]
    shutil.rmtree(again.paths.output_dir)
