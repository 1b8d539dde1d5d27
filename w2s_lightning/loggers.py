"""Dashboard and local loggers, one set per stage, built from `conf/logger/` with no code per
logger: each YAML node names a Lightning logger class and its own keys, and `stage_loggers`
adds what identifies the stage (run name, group, version folder) in that logger's own words,
then records the resolved config as its hyperparameters. A key the YAML sets wins."""

from __future__ import annotations

import inspect
import os
from contextlib import nullcontext
from pathlib import Path

from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from w2s_lightning import distributed
from w2s_lightning.config import flat_config

DEFAULT_NAME = "w2s"  # conf/train.yaml's `name`: a name the user chose is the group, the default is not

# Test metrics of stages restored from the cache, per run folder, until that run's metrics run.
_cached: dict[str, dict[str, float]] = {}


def folder_group(folder) -> str:
    """`2025-01-02/10-00-00-123456_4242`: a run's or sweep's folder as a group name."""
    return "/".join(Path(folder).parts[-2:])


def run_group(cfg) -> str:
    """The dashboard group: `name` when the user set one, else this sweep's folder (in a
    multirun) or this run's, so separate sweeps never mix."""
    if cfg.name != DEFAULT_NAME:
        return str(cfg.name)
    folder = cfg.paths.output_dir
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        folder = hydra.sweep.dir if hydra.mode == RunMode.MULTIRUN else hydra.runtime.output_dir
    return folder_group(folder)


def labels(tags: list[str]) -> dict[str, str]:
    """`["weak:tiny_bert", "seed:0"]` as `{"weak": "tiny_bert", "seed": "0"}`."""
    return dict(tag.split(":", 1) for tag in tags if ":" in tag)


def run_name(cfg, stage: str, tags: list[str]) -> str:
    """`tiny_bert→tiny_gpt2 xent s0 ceiling`: the pair, the student's loss, the seed, the stage."""
    return f"{cfg.weak_model.name}→{cfg.strong_model.name} {labels(tags).get('loss', '')} s{cfg.seed} {stage}"


def is_a(target, cls) -> bool:
    return isinstance(target, type) and issubclass(target, cls)


def stage_args(target, stage: str, tags: list[str], name: str, group: str) -> dict:
    """What tells this stage's run apart, in the arguments `target` takes."""
    if is_a(target, WandbLogger):
        return {"name": name, "group": group, "job_type": stage, "tags": tags, "reinit": "finish_previous"}
    if is_a(target, MLFlowLogger):
        return {"experiment_name": group, "run_name": name, "tags": {**labels(tags), "stage": stage}}
    if is_a(target, TensorBoardLogger | CSVLogger):
        return {"version": stage}  # <save_dir>/<name>/<stage>/: one folder per stage
    # Any other logger (Comet, Neptune, a factory of your own): the identity arguments it names.
    candidates = {
        "stage": stage,
        "tags": tags,
        "name": name,
        "run_name": name,
        "experiment_name": group,
        "group": group,
    }
    return {k: v for k, v in candidates.items() if k in inspect.signature(target).parameters}


def stage_loggers(cfg, stage: str, tags: list[str]) -> list[Logger]:
    """Every logger of `cfg.logger` for one stage that trains (or for the metrics run), each
    holding the whole resolved config as hyperparameters. Under data parallelism only rank 0
    has loggers: the numbers every rank computes are the same."""
    if not distributed.is_leader():
        return []
    name, group = run_name(cfg, stage, tags), run_group(cfg)
    config = {**flat_config(cfg), "stage": stage}
    loggers = []
    for node in (cfg.logger or {}).values():
        if node is None:
            continue
        factory = instantiate(node, _partial_=True)
        given = {key for key, value in node.items() if value is not None}
        kwargs = {k: v for k, v in stage_args(factory.func, stage, list(tags), name, group).items() if k not in given}
        if is_a(factory.func, WandbLogger) and os.environ.get("WANDB_MODE") == "online":
            kwargs["offline"] = False  # the environment wins over the YAML's offline default, as W&B users expect
        with store_lock({**factory.keywords, **kwargs}):
            logger = factory(**kwargs)
            logger.log_hyperparams(config)  # W&B config, MLflow params, CSV hparams.yaml
        if isinstance(logger, TensorBoardLogger):
            tensorboard_session(logger, config)
        loggers.append(logger)
    if stage == "metrics":
        log_metrics(loggers, _cached.pop(str(cfg.paths.output_dir), {}))
    return loggers


def store_lock(args: dict):
    """A lock on a local SQLite tracking store (MLflow's): the parallel jobs of a sweep would
    otherwise race to create its tables and the sweep's experiment, and all but one fail."""
    uri = str(args.get("tracking_uri") or "")
    if not uri.startswith("sqlite:///"):
        return nullcontext()
    path = Path(uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{path}.lock")


def log_metrics(loggers: list[Logger], metrics: dict[str, float]) -> None:
    """One row of numbers in every logger, and the same as W&B summary fields."""
    if not metrics:
        return
    for logger in loggers:
        logger.log_metrics(metrics)
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(metrics)


def log_summary(loggers: list[Logger], metrics: dict[str, float], cached: bool | None = None) -> None:
    """Final numbers of a stage: a metrics row in every logger and W&B summary fields."""
    if cached is not None:
        for logger in loggers:
            logger.log_hyperparams({"cached": cached})
    log_metrics(loggers, {k: v for k, v in metrics.items() if v is not None})


def tensorboard_session(logger: TensorBoardLogger, config: dict) -> None:
    """The config as this run's HParams session, without an `experiment` record: TensorBoard
    then offers every scalar of every run as a column (one run's record would hide the rest)."""
    from torch.utils.tensorboard.summary import hparams

    plain = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in config.items()}
    logger.experiment._get_file_writer().add_summary(hparams(plain, {})[1])


def close(loggers: list[Logger]) -> None:
    """Finish every run, so the next stage's W&B logger starts a new run instead of silently
    reusing this one."""
    for logger in loggers:
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def record_cached(cfg, stage: str, tags: list[str], metrics: dict[str, float]) -> None:
    """A stage restored from the cache gets no run of its own, so a fully cached rerun of a
    sweep adds one run per job, not one per stage: its stored test metrics go into the summary
    of this experiment's `metrics` run as `cached/<stage>/test/<metric>`."""
    _cached.setdefault(str(cfg.paths.output_dir), {}).update({f"cached/{k}": v for k, v in metrics.items()})
