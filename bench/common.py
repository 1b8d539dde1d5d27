"""Plumbing every benchmark shares: the project's own Hydra config, offline subprocesses,
device synchronisation and the median/spread summary of repeated timings."""

from __future__ import annotations

import logging
import os
import statistics
import warnings
from pathlib import Path

import torch
import transformers
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from w2s_lightning import config

ROOT = Path(__file__).resolve().parent.parent

OFFLINE_ENV = {
    "WANDB_SILENT": "true",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def offline_env() -> dict[str, str]:
    return {**os.environ, **OFFLINE_ENV, "PYTHONUNBUFFERED": "1"}


def quiet() -> None:
    """Lightning's start-up banners and data-loader advice would bury the benchmark table."""
    os.environ.update(OFFLINE_ENV)
    transformers.utils.logging.disable_progress_bar()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "w2s_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
    warnings.filterwarnings("ignore", message=".*The number of training batches.*")
    warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def compose_cfg(overrides: list[str], workdir: Path) -> DictConfig:
    """`conf/train.yaml` composed the way `train.py` composes it, with run outputs under `workdir`."""
    config.setup()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        # Outside a Hydra run there is no runtime output dir to resolve.
        cfg.paths.output_dir = str(workdir / "run")
        cfg.paths.cache_dir = str(workdir / "cache")
    OmegaConf.resolve(cfg)
    return cfg


def torch_device(cfg: DictConfig) -> torch.device:
    return torch.device("cuda" if cfg.trainer.accelerator in ("gpu", "cuda") else "cpu")


def synchronize(device: torch.device) -> None:
    """CUDA work is asynchronous: a clock read without this measures only the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def spread(values: list[float]) -> dict:
    """Median and range of repeated measurements; the values themselves stay in the JSON."""
    values = [float(v) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def load_average() -> list[float]:
    """The 1/5/15-minute load: on a shared machine it says how contended a run was."""
    return [round(x, 2) for x in os.getloadavg()]
