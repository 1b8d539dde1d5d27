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
