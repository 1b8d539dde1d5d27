"""Plumbing every benchmark shares: the project's own Hydra config, offline subprocesses,
device synchronisation, wall and CPU clocks, and the median/spread summary of repeated timings."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import statistics
import subprocess
import time
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


def make_trainer(cfg: DictConfig, **kwargs):
    """The Trainer as the pipeline builds it: through `stages.make_trainer` where the project has
    one (it may settle precision and sampler settings), else straight from the config."""
    from hydra.utils import instantiate

    from w2s_lightning import stages

    build = getattr(stages, "make_trainer", None)
    return build(cfg, **kwargs) if build else instantiate(cfg.trainer, **kwargs)


def torch_device(cfg: DictConfig) -> torch.device:
    return torch.device("cuda" if cfg.trainer.accelerator in ("gpu", "cuda") else "cpu")


def synchronize(device: torch.device) -> None:
    """CUDA work is asynchronous: a clock read without this measures only the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Wall and CPU time since `start()`. CPU time is the process's user + system time over all
    its threads: on a shared machine it leaves out the time spent waiting for a core, which the
    wall clock counts, so it moves far less with other people's load."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def start(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def children_cpu() -> float:
    """User + system seconds of every finished child process so far (waited for, as
    subprocess.run does), including their own waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(cmd: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run a process to its end: (result, wall seconds, CPU seconds), start-up included."""
    cpu, start = children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    return proc, time.perf_counter() - start, children_cpu() - cpu


def digest(value) -> str:
    """A short, stable hash of a JSON-able value (batch index lists, id lists)."""
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()[:16]


def spread(values: list[float]) -> dict:
    """Median and range of repeated measurements; the values themselves stay in the JSON."""
    values = [float(v) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def load_average() -> list[float]:
    """The 1/5/15-minute load: on a shared machine it says how contended a run was."""
    return [round(x, 2) for x in os.getloadavg()]
