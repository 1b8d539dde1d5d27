"""The sweep's report as one W&B run in the sweep's group."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from w2s_lightning.loggers import DEFAULT_NAME, folder_group
from w2s_lightning.report.markdown import median_markdown
from w2s_lightning.report.tables import grouped_settings

log = logging.getLogger(__name__)


def lenient_container(node) -> dict:
    """The W&B node as a plain dict, leaving out keys that cannot be resolved here: after a
    multirun `save_dir: ${paths.output_dir}` points at a job's folder, which no longer exists
    as a Hydra runtime value, so the report falls back to the sweep folder."""
    if not OmegaConf.is_config(node):
        return dict(node)
    plain = {}
    for key in node:
        try:
            value = node[key]
            plain[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        except OmegaConfBaseException as err:
            log.info(
                "W&B setting %s is not resolvable for the sweep report (%s); using its default", key, type(err).__name__
            )
    return plain


def wandb_settings(wandb_cfg, sweep_dir: Path, frame: pd.DataFrame) -> dict:
    """Arguments for wandb.init, following the stage loggers' rules: offline unless the config
    or WANDB_MODE=online says otherwise, grouped with the sweep's runs."""
    cfg = lenient_container(wandb_cfg)
    offline = bool(cfg.get("offline", True)) and os.environ.get("WANDB_MODE") != "online"
    # The stage loggers' rule: a name the user chose, else the sweep folder.
    names = [n for n in frame["name"].dropna().astype(str).unique() if n != DEFAULT_NAME]
    group = cfg.get("group") or (names[0] if len(names) == 1 else folder_group(sweep_dir))
    save_dir = Path(cfg.get("save_dir") or sweep_dir)
    return {
        "project": cfg.get("project"),
        "entity": cfg.get("entity"),
        "group": str(group),
        "job_type": "report",
        "name": f"{group}/report",
        "tags": ["report"],
        "dir": str(save_dir),
        "mode": "offline" if offline else None,
        "config": {"sweep_dir": str(sweep_dir)},
    }


def wandb_table(frame: pd.DataFrame):
    import wandb

    # W&B tables reject NaN mixed into text or bool columns; None reads as a missing cell. A
    # config key may hold a number in one job and text in another ("auto" devices).
    cells = frame.astype(object).where(frame.notna(), None)
    return wandb.Table(dataframe=cells, allow_mixed_types=True)


def log_to_wandb(settings: dict, frame: pd.DataFrame, medians: pd.DataFrame, figures: dict[str, Path]) -> Path:
    """One run holding the summary, the median table and the figures; returns its local folder."""
    import wandb

    Path(settings["dir"]).mkdir(parents=True, exist_ok=True)
    # create_new: never finish or reuse a run that something else in this process still holds.
    run = wandb.init(**settings, reinit="create_new")
    try:
        run.log(
            {
                "summary": wandb_table(frame),
                "median_pgr": wandb_table(medians),
                **{f"figures/{name}": wandb.Image(str(path)) for name, path in figures.items()},
            }
        )
        run.summary["median_pgr_table"] = median_markdown(medians)
        swept = grouped_settings(medians)
        for _, row in medians.iterrows():
            path = "/".join([str(row.dataset), str(row.loss), *(f"{k}={row[k]}" for k in swept)])
            for column in ("median_pgr", "median_pgr_mean_acc"):
                if not math.isnan(row[column]):
                    run.summary[f"{column}/{path}"] = row[column]
        run_dir = Path(run.dir).parent
    finally:
        run.finish()
    return run_dir
