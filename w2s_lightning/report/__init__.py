"""The report at the end of a sweep: every job's results.json gathered into one table, the
median PGR per loss, the paper's two pictures per loss, and optionally one W&B run that
carries all of it.

    python -m w2s_lightning.report outputs/multirun/2025-01-01/12-00-00-000000_1234
    python -m w2s_lightning.report <sweep_dir> --wandb     # also log it, as conf/logger/wandb.yaml says

Hydra calls the same code after a multirun through `ReportCallback` (conf/hydra/default.yaml)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from w2s_lightning.report.collect import RESULTS, collect, unfinished
from w2s_lightning.report.dashboard import log_to_wandb, wandb_settings
from w2s_lightning.report.figures import write_figures
from w2s_lightning.report.markdown import median_markdown, render_markdown
from w2s_lightning.report.tables import SPREAD, counted_runs, median_pgr_table, pair_table

__all__ = [
    "SPREAD",
    "ReportCallback",
    "collect",
    "counted_runs",
    "median_markdown",
    "median_pgr_table",
    "pair_table",
    "unfinished",
    "wandb_settings",
    "write_report",
]

log = logging.getLogger(__name__)


def write_report(sweep_dir: str | Path, wandb_cfg=None, frame: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write summary.csv, report.md and the figures into `sweep_dir`; with a W&B config (the
    composed `logger.wandb` node or a dict) also log them as one run. `frame` is the sweep as
    `collect` reads it, when the caller already has it. Returns what was written, by name;
    "wandb" is the run's local folder."""
    sweep_dir = Path(sweep_dir)
    frame = collect(sweep_dir) if frame is None else frame
    if frame.empty:
        log.warning("no %s under %s: the report is empty", RESULTS, sweep_dir)
    written = {"summary": sweep_dir / "summary.csv", "report": sweep_dir / "report.md"}
    frame.to_csv(written["summary"], index=False)
    figures = write_figures(frame, sweep_dir)
    written["report"].write_text(render_markdown(sweep_dir, frame, figures))
    written.update(figures)
    if wandb_cfg is not None:
        settings = wandb_settings(wandb_cfg, sweep_dir, frame)
        written["wandb"] = log_to_wandb(settings, frame, median_pgr_table(frame), figures)
    log.info("sweep report written to %s", written["report"])
    return written


class ReportCallback(Callback):
    """Writes the sweep report after the last job of a multirun. A failure to write it is
    logged and swallowed: the jobs' results are already on disk and the report can be rebuilt
    with `python -m w2s_lightning.report <sweep_dir>`. A job that failed or did not finish
    makes the multirun exit non-zero, so a script or scheduler running the sweep sees it."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # The launcher reads the same config object, so `${now:...}` resolves to the same folder.
        print(f"sweep folder: {Path(config.hydra.sweep.dir)}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir, frame = None, None
        try:
            sweep_dir = config.hydra.sweep.dir
            frame = collect(sweep_dir)
            written = write_report(sweep_dir, OmegaConf.select(config, "logger.wandb", default=None), frame)
            # The sweep's answer on the terminal, not only in report.md.
            print(f"\n{median_markdown(median_pgr_table(frame))}\n", flush=True)
            print(f"sweep folder: {Path(sweep_dir)}  (report: {written['report'].name})", flush=True)
        except Exception:
            log.exception(
                "writing the sweep report for %s failed; the runs are intact, rebuild it with "
                "`python -m w2s_lightning.report %s`",
                sweep_dir,
                sweep_dir or "<sweep_dir>",
            )
        if frame is not None and not unfinished(frame).empty:
            log.error(
                "%d of %d jobs did not finish: see %s",
                len(unfinished(frame)),
                len(frame),
                Path(sweep_dir) / "report.md",
            )
            # SystemExit, not an Exception: Hydra re-raises the latter with a traceback.
            raise SystemExit(1)
