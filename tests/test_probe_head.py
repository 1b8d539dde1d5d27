"""A linear probe's stages hold only its head: the frozen encoder is built where features are
computed, only for a feature missing from the cache, so a stage whose features are all cached
never loads the backbone; the head is named and drawn as a full classifier's."""

from __future__ import annotations

import json

import pytest
import torch

from w2s_lightning.models import classifier
from w2s_lightning.models.classifier import Classifier, ProbeHead
from w2s_lightning.models.system import ClassifierSystem
from w2s_lightning.pipeline import run

from .helpers import compose_cfg, loaded_probe


def test_a_stage_whose_features_are_all_cached_never_loads_the_encoder(tmp_path, saved_gpt2, monkeypatch):
    first = compose_cfg(tmp_path, *loaded_probe(saved_gpt2, "prefetch_features=false"))
    run(first)

    def no_encoder(self, *args, **kwargs):
        raise AssertionError("the encoder was built although every feature is in the cache")

    monkeypatch.setattr(classifier.Encoder, "__init__", no_encoder)
    second = compose_cfg(tmp_path, *loaded_probe(saved_gpt2, "prefetch_features=false", "loss=logconf"))
    second.paths.output_dir = str(tmp_path / "logconf")
    run(second)  # a new student, on the features of the first run
    results = json.loads((tmp_path / "logconf" / "results.json").read_text())
    assert results["status"] == "done" and not results["student"]["cached"]
    assert results["weak"]["cached"] and results["ceiling"]["cached"]


def test_a_probe_head_is_named_and_drawn_as_a_classifiers_head(tmp_path, saved_gpt2):
    spec = compose_cfg(tmp_path, *loaded_probe(saved_gpt2, "strong_model.head_init_std=0.02")).strong_model
    torch.manual_seed(0)
    full = Classifier(spec).trainable_state_dict()  # a probe's Classifier trains its head alone
    torch.manual_seed(0)
    head = ProbeHead(spec).trainable_state_dict()
    assert full.keys() == head.keys() == {"head.weight", "head.bias"}
    assert all(torch.equal(full[k], head[k]) for k in full)


def test_a_probes_system_trains_on_features(tmp_path, saved_gpt2):
    spec = compose_cfg(tmp_path, *loaded_probe(saved_gpt2)).strong_model
    system = ClassifierSystem(spec, None, None)
    assert isinstance(system.model, ProbeHead) and not hasattr(system.model, "backbone")
    logits = system({"features": torch.randn(3, 48), "input_ids": torch.zeros(3, 4, dtype=torch.long)})
    assert logits.shape == (3, 2)
    with pytest.raises(TypeError):
        system.model(input_ids=torch.zeros(3, 4, dtype=torch.long))  # texts never reach a probe's head
