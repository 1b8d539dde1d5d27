"""Shared fixtures."""

from __future__ import annotations

import pytest
from omegaconf import DictConfig

from .helpers import compose_cfg


@pytest.fixture
def make_cfg(tmp_path):
    def make(*overrides: str, run: str = "run") -> DictConfig:
        cfg = compose_cfg(tmp_path, *overrides)
        cfg.paths.output_dir = str(tmp_path / run)
        return cfg

    return make


@pytest.fixture(scope="session")
def saved_gpt2(tmp_path_factory) -> str:
    """tiny_gpt2's random weights saved to a folder: a probe whose weights are loaded, not drawn."""
    import torch
    from transformers import AutoModel

    from w2s_lightning.models.backbone import load_config

    folder = tmp_path_factory.mktemp("tiny_gpt2")
    spec = compose_cfg(folder, "strong_model=tiny_gpt2").strong_model
    torch.manual_seed(0)
    AutoModel.from_config(load_config(spec)).save_pretrained(folder)
    return str(folder)
