"""The key of a frozen encoder's cached features names everything that decides them: features
cached for one model, batch size or device must never be read for another."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from omegaconf import OmegaConf

from w2s_lightning.config import ModelSpec
from w2s_lightning.stages import HEAD_ONLY_FIELDS, RUNTIME_ONLY_TRAINER_KEYS, feature_key

TEXTS = pd.DataFrame({"id": ["a", "b"], "text": ["one text", "another text"], "label": [0, 1]})
FIELDS = [f.name for f in dataclasses.fields(ModelSpec)]


def base_spec() -> dict:
    spec = OmegaConf.to_container(OmegaConf.structured(ModelSpec))
    return {**spec, "name": "enc", "size": 1.0e6, "pretrained": "some/encoder"}


def changed(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, dict):
        return {**value, "other": 1}
    return "other"  # None


def key(spec: dict, **trainer) -> str:
    cfg = OmegaConf.create({"seed": 0, "trainer": {"accelerator": "cpu", "precision": "32-true", **trainer}})
    return feature_key(cfg, OmegaConf.create(spec), TEXTS)


def test_head_only_fields_are_catalogue_fields():
    assert set(HEAD_ONLY_FIELDS) <= set(FIELDS)


@pytest.mark.parametrize("field", FIELDS)
def test_every_field_but_the_heads_is_in_the_key(field):
    spec = base_spec()
    other = {**spec, field: changed(spec[field])}
    assert (key(other) == key(spec)) == (field in HEAD_ONLY_FIELDS)


def test_a_checkpoint_of_a_model_never_reads_the_final_models_features(make_cfg):
    final = make_cfg("strong_model=pythia_410m", "strong_model.linear_probe=true")
    early = make_cfg("strong_model=ckpt_pythia_410m_step16000", "strong_model.linear_probe=true")
    assert final.strong_model.pretrained == early.strong_model.pretrained
    assert feature_key(final, final.strong_model, TEXTS) != feature_key(early, early.strong_model, TEXTS)


@pytest.mark.parametrize(
    "setting", [{"accelerator": "gpu"}, {"precision": "bf16-mixed"}, {"devices": 2}, {"strategy": "ddp"}]
)
def test_the_device_precision_and_strategy_are_in_the_key(setting):
    assert key(base_spec(), **setting) != key(base_spec())


@pytest.mark.parametrize("setting", sorted(RUNTIME_ONLY_TRAINER_KEYS))
def test_how_a_run_is_watched_is_not(setting):
    assert key(base_spec(), **{setting: "anything"}) == key(base_spec())


def test_ids_and_labels_are_not_the_texts_are():
    spec = base_spec()
    relabelled = TEXTS.assign(id=["x", "y"], label=[1, 0])
    edited = TEXTS.assign(text=["one text", "edited"])
    cfg = OmegaConf.create({"seed": 0, "trainer": {"accelerator": "cpu", "precision": "32-true"}})
    spec = OmegaConf.create(spec)
    assert feature_key(cfg, spec, relabelled) == feature_key(cfg, spec, TEXTS)
    assert feature_key(cfg, spec, edited) != feature_key(cfg, spec, TEXTS)
