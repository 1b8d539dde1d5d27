"""Dashboard and local loggers, one set per stage. Each factory takes the stage's identity
(`stage`, `tags`) plus its own YAML keys, so the pipeline builds every configured logger
the same way."""

from __future__ import annotations

import os

from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger


def wandb_logger(stage: str, tags: list[str], group: str, offline: bool = True, **kwargs) -> WandbLogger:
    """One W&B run per stage, grouped per experiment or sweep. `WANDB_MODE=online` in the
    environment wins over the offline default, as W&B users expect."""
    if os.environ.get("WANDB_MODE") == "online":
        offline = False
    return WandbLogger(
        name=f"{group}/{stage}",
        group=group,
        job_type=stage,
        tags=list(tags),
        offline=offline,
        reinit="finish_previous",
        **kwargs,
    )


def csv_logger(stage: str, tags: list[str], save_dir: str, **kwargs) -> CSVLogger:
    return CSVLogger(save_dir=save_dir, name="csv", version=stage, **kwargs)


def log_summary(loggers: list[Logger], metrics: dict[str, float], cached: bool | None = None) -> None:
    """Final numbers of a stage: a metrics row in every logger and W&B summary fields."""
    metrics = {k: v for k, v in metrics.items() if v is not None}
    for logger in loggers:
        if cached is not None:
            logger.log_hyperparams({"cached": cached})
        logger.log_metrics(metrics)
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update({**metrics, **({} if cached is None else {"cached": cached})})


def close(loggers: list[Logger]) -> None:
    """Finish every run, so the next stage's W&B logger starts a new run instead of silently
    reusing this one."""
    for logger in loggers:
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def stage_loggers(cfg, stage: str, tags: list[str]) -> list[Logger]:
    """Every logger of `cfg.logger` for one stage that trains (or for the metrics run)."""
    return [instantiate(node)(stage=stage, tags=list(tags)) for node in (cfg.logger or {}).values() if node is not None]


def record_cached(cfg, stage: str, tags: list[str], metrics: dict[str, float]) -> None:
    """What the trackers get for a stage restored from the cache."""
    loggers = stage_loggers(cfg, stage, [*tags, "cached"])
    log_summary(loggers, metrics, cached=True)
    close(loggers)
