"""The real Hydra config, pointed at tiny models and data, for tests to build on."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from w2s_lightning import config

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Small enough that a whole experiment runs in a few seconds on 2 cores.
TINY = [
    "weak_model=tiny_bert",
    "strong_model=tiny_gpt2",
    "logger=none",
    "dataset.n_weak=96",
    "dataset.n_strong=96",
    "dataset.n_val=32",
    "dataset.n_test=96",
    "train.epochs=1",
    "trainer.log_every_n_steps=1",
]

config.setup()


def compose_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    """The real `conf/train.yaml`, with outputs and the cache under `tmp_path`."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path / "cache")
    OmegaConf.resolve(cfg)
    return cfg


def run_identity(weak: str, strong: str, loss: str, seed: int, sizes: dict, name: str = "w2s") -> dict:
    """The identity fields of a hand-written results.json (report tests)."""
    return {
        "weak_model": weak,
        "strong_model": strong,
        "weak_size": sizes[weak],
        "strong_size": sizes[strong],
        "loss": loss,
        "dataset": "sciq",
        "seed": seed,
        "name": name,
    }


def loaded_probe(saved: str, *more: str) -> list[str]:
    """Overrides for a tiny linear probe whose weights are loaded from `saved` (the `saved_gpt2`
    fixture), under a tiny weak model."""
    return ["weak_model=tiny_bert", f"strong_model.pretrained={saved}", "strong_model.linear_probe=true", *more]
