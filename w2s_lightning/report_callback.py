"""The Hydra callback that writes a sweep's report (conf/hydra/default.yaml). Hydra builds it at
the start of every run, a single run too, so it lives outside `w2s_lightning.report`, whose modules
(pandas, matplotlib, the dashboards) load only when a multirun ends."""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class ReportCallback(Callback):
    """`w2s_lightning.report.ReportCallback`, imported when a multirun ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # The launcher reads the same config object, so `${now:...}` resolves to the same folder.
        print(f"sweep folder: {Path(config.hydra.sweep.dir)}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from w2s_lightning.report import ReportCallback as Report

        Report().on_multirun_end(config, **kwargs)
