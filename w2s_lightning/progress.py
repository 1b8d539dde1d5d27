"""Lightning callbacks that show a stage's progress (see console.py for the rest of what a person
watching sees). Apart from console.py because they need Lightning, which takes seconds to import:
the command line, the summary and a replayed cached run need none of it."""

from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from w2s_lightning.console import epoch_line, interactive, pass_line, pass_name, stage_metrics


def stage_callbacks(cfg, stage: str) -> list:
    """Lightning callbacks that show a stage's progress: a bar on a terminal, else lines."""
    if not cfg.trainer.get("enable_progress_bar", True):
        return []  # progress switched off on purpose (Lightning refuses a bar then)
    return [StageBar(stage) if interactive() else EpochLines(stage)]


class EpochLines(ProgressBar):
    """One line per epoch (with the epoch's mean loss) and per prediction pass, printed to
    stdout: readable in a log file, where a bar's redraws would be noise."""

    def __init__(self, stage: str):
        super().__init__()
        self.stage, self.enabled = stage, True
        self.started, self.losses = 0.0, []

    def disable(self) -> None:  # Lightning calls this on every rank but the first
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.started, self.losses = time.perf_counter(), []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.callback_metrics.get(f"{self.stage}/train/loss")
        if loss is not None:
            self.losses.append(float(loss))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Validation has run by now, so its accuracy is this epoch's.
        metrics = stage_metrics(trainer.callback_metrics, self.stage)
        if self.losses:
            metrics["loss"] = sum(self.losses) / len(self.losses)
        seconds = time.perf_counter() - self.started
        self.emit(epoch_line(self.stage, trainer.current_epoch + 1, trainer.max_epochs, metrics, seconds))

    def on_predict_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def on_predict_end(self, trainer, pl_module) -> None:
        loaders = trainer.predict_dataloaders
        examples = sum(len(loader.dataset) for loader in (loaders if isinstance(loaders, list) else [loaders]))
        self.emit(pass_line(self.stage, pass_name(pl_module), examples, time.perf_counter() - self.started))

    def emit(self, line: str) -> None:
        if self.enabled:
            # Through tqdm: a bar that another stage draws meanwhile is lifted and redrawn below it.
            Tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()


class StageBar(TQDMProgressBar):
    """Lightning's tqdm bars, named by stage (`ceiling epoch 1/2`, `ceiling features`), on stderr.
    The training bar stays on screen when its stage ends; validation and prediction bars go."""

    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage

    def bar(self, what: str, leave: bool, position: int = 0) -> Tqdm:
        return Tqdm(
            desc=f"{self.stage} {what}",
            position=position,
            disable=self.is_disabled,
            leave=leave,
            dynamic_ncols=True,
            file=sys.stderr,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def init_sanity_tqdm(self) -> Tqdm:
        return self.bar("sanity check", leave=False)

    def init_train_tqdm(self) -> Tqdm:
        return self.bar("epoch", leave=True)

    def init_validation_tqdm(self) -> Tqdm:
        return self.bar("validation", leave=False, position=1)

    def init_predict_tqdm(self) -> Tqdm:
        return self.bar("predict", leave=False)

    # Lightning names each bar as it starts ("Epoch 0", "Predicting DataLoader 0"); rename it.
    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"{self.stage} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        super().on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        if batch_idx == 0:
            what = "sanity check" if trainer.sanity_checking else "validation"
            self.val_progress_bar.set_description(f"{self.stage} {what}")

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        super().on_predict_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        if batch_idx == 0:
            self.predict_progress_bar.set_description(f"{self.stage} {pass_name(pl_module)}")

    def get_metrics(self, trainer, pl_module) -> dict:
        return stage_metrics(trainer.callback_metrics, self.stage)
