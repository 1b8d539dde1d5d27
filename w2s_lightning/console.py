"""What a person watching a run sees: a progress bar per stage on a terminal, one line per epoch
and per prediction pass in a log file, the run folder at the start and a summary at the end.
Known third-party chatter is silenced unless `verbose=true`."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.utilities import rank_zero_only

# Harmless messages that repeat on every run; verbose=true shows them again.
QUIET_WARNINGS = (
    # torch 2.13 deprecated a class Lightning 2.6 still uses: one copy per fit and per prediction.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
# Lightning's info lines: "GPU available", "TPU available", "💡 Tip", "Seed set to",
# "`Trainer.fit` stopped", "Loading `train_dataloader`". Its warnings still show.
QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric")
STAGE_WIDTH = len("ceiling")  # the longest stage name: per-stage lines line up


def setup(cfg) -> None:
    """Once per run, before any stage: quiet the known third-party output unless `verbose`."""
    if logging.getLogger().handlers:
        # Lightning adds its own stderr handler beside Hydra's: each of its lines would show twice.
        logging.getLogger("lightning").handlers.clear()
    if cfg.get("verbose", False):
        return
    # setdefault: a user who exported these keeps their choice.
    os.environ.setdefault("WANDB_SILENT", "true")  # W&B's banner, run summary and sync hints
    os.environ.setdefault("WANDB_CONSOLE", "off")  # W&B would copy the terminal, bars and all, into each run
    if uses_wandb(cfg) and os.environ["WANDB_SILENT"] == "true":
        import wandb

        # W&B applies WANDB_SILENT only once its settings load, after it has checked the first run's
        # arguments, where Lightning's `anonymous=None` draws a deprecation warning. Not
        # `wandb.setup()`: that would freeze W&B's settings before Lightning sets WANDB_MODE=dryrun.
        wandb.termsetup(wandb.Settings(silent=True), None)
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    if hasattr(hf_logging, "set_tqdm_hook"):  # transformers >= 5
        hf_logging.set_tqdm_hook(hide_weight_loading)


def uses_wandb(cfg) -> bool:
    loggers = cfg.get("logger") or {}
    return any(node and "wandb" in str(node.get("_target_", "")).lower() for node in loggers.values())


def hide_weight_loading(factory, args, kwargs):
    """transformers draws a bar for copying weights into the model (instant here); downloads
    keep theirs."""
    if kwargs.get("desc") == "Loading weights":
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


def interactive() -> bool:
    """Live bars need a terminal; a file or a cluster log gets lines instead. stderr, because
    the bars are drawn there and stdout is often piped to a file while stderr stays on screen."""
    return sys.stderr.isatty()


def stage_callbacks(cfg, stage: str) -> list:
    """Lightning callbacks that show a stage's progress: a bar on a terminal, else lines."""
    if not cfg.trainer.get("enable_progress_bar", True):
        return []  # progress switched off on purpose (Lightning refuses a bar then)
    return [StageBar(stage) if interactive() else EpochLines(stage)]


def stage_metrics(metrics: dict, stage: str) -> dict[str, float]:
    """The numbers worth watching: the training loss and the validation accuracy (ClassifierSystem
    logs them as `<stage>/train/loss` and `<stage>/val/acc`)."""
    keys = {"loss": f"{stage}/train/loss", "val acc": f"{stage}/val/acc"}
    return {name: float(metrics[key]) for name, key in keys.items() if key in metrics}


def epoch_line(stage: str, epoch: int, epochs: int, metrics: dict[str, float], seconds: float) -> str:
    """`ceiling  epoch 1/2  loss 0.512  val acc 0.801  12.3 s`"""
    parts = [f"{stage:<{STAGE_WIDTH}}", f"epoch {epoch}/{epochs}"]
    parts += [f"{name} {value:.3f}" for name, value in metrics.items()]
    return "  ".join([*parts, f"{seconds:.1f} s"])


def pass_line(stage: str, what: str, examples: int, seconds: float) -> str:
    """`ceiling  features  4000 examples  24.9 s`"""
    return f"{stage:<{STAGE_WIDTH}}  {what:<8}  {examples} examples  {seconds:.1f} s"


def pass_name(pl_module) -> str:
    """A linear probe's backbone computing features, or the model predicting probabilities."""
    return "features" if getattr(pl_module, "predict_features", False) else "predict"


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
            print(line, flush=True)


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


def shown(path) -> str:
    """`path` relative to the working directory when it lies inside it: shorter to read and copy."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@rank_zero_only
def announce(cfg) -> None:
    print(f"run folder: {shown(cfg.paths.output_dir)}", flush=True)


def number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def row(label: str, text: str) -> str:
    return f"{label:<{STAGE_WIDTH}}  {text}"


def summary_lines(results: dict, where: str, seconds: float | None = None) -> list[str]:
    """The block that ends a single run, from its results.json (see README "Outputs")."""
    # A run still "running" when the summary is printed was interrupted (Ctrl-C).
    status = {"running": "interrupted"}.get(results.get("status"), results.get("status"))
    took = "" if seconds is None else f" in {seconds:.1f} s"
    what = (
        f"{results.get('weak_model')} -> {results.get('strong_model')}, {results.get('dataset')}, "
        f"loss {results.get('loss')}, seed {results.get('seed')}"
    )
    lines = [f"== {status}{took}: {what}"]
    if status == "done":
        for stage in ("weak", "ceiling", "student"):
            entry = results.get(stage) or {}
            seconds = entry.get("train_seconds")
            trained = "" if seconds is None else f"trained in {seconds:.1f} s"
            origin = f"from the cache ({trained} earlier)" if entry.get("cached") else trained
            scores = f"test acc {number(entry.get('acc'))}  auroc {number(entry.get('auroc'))}"
            lines.append(row(stage, f"{scores}  {origin}".rstrip()))
        pgr = results.get("pgr")
        lines.append(row("PGR", "undefined: the ceiling does not beat weak" if pgr is None else f"{pgr:.3f}"))
    elif status == "failed":
        lines.append(row("failed", f"in stage {results.get('failed_stage')} (the error is above)"))
    elif status == "skipped":
        lines.append(row("skipped", str(results.get("reason"))))
    lines.append(row("results", where))
    return lines


@rank_zero_only
def summary(cfg, seconds: float | None = None) -> None:
    """Print the summary block of the run in `cfg.paths.output_dir`, if it wrote results.json."""
    path = Path(cfg.paths.output_dir) / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # it stopped before writing any: the error above says why
    print("\n".join(summary_lines(results, shown(path), seconds)), flush=True)
