"""What a person watching a run sees: a progress bar per stage on a terminal, one line per epoch
and per prediction pass in a log file, the run folder at the start and a summary at the end.
Known third-party chatter is silenced unless `verbose=true`."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path

from w2s_lightning import distributed

# Harmless messages that repeat on every run; verbose=true shows them again.
QUIET_WARNINGS = (
    # torch 2.13 deprecated a class Lightning 2.6 still uses: one copy per fit and per prediction.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # Data parallelism: the system gathers validation outputs from every rank before it logs.
    r"It is recommended to use `self.log\(.*sync_dist=True\)`",
)
# Lightning's info lines: "GPU available", "TPU available", "💡 Tip", "Seed set to",
# "`Trainer.fit` stopped", "Loading `train_dataloader`". Its warnings still show.
QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric")
STAGE_WIDTH = len("ceiling")  # the longest stage name: per-stage lines line up


def setup(cfg) -> None:
    """Once per run, before any stage: quiet the known third-party output unless `verbose`."""
    # Lightning sets its loggers' level and handler when imported: import it first, then quiet it.
    import lightning.pytorch  # noqa: F401

    if logging.getLogger().handlers:
        # Lightning adds its own stderr handler beside Hydra's: each of its lines would show twice.
        logging.getLogger("lightning").handlers.clear()
    if not distributed.is_leader():
        # Every rank runs the recipe; one copy of each line is enough (errors still show).
        logging.getLogger().setLevel(logging.WARNING)
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


def shown(path) -> str:
    """`path` relative to the working directory when it lies inside it: shorter to read and copy."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def announce(cfg) -> None:
    if not distributed.is_leader():
        return
    print(f"run folder: {shown(cfg.paths.output_dir)}", flush=True)


def scores(results: dict) -> str:
    """The run's numbers in one log line."""
    pgr = "undefined" if results["pgr"] is None else f"{results['pgr']:.3f}"
    return (
        f"weak {results['weak']['acc']:.3f} | student {results['student']['acc']:.3f} | "
        f"ceiling {results['ceiling']['acc']:.3f} | PGR {pgr}"
    )


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


def summary(cfg, seconds: float | None = None) -> None:
    """Print the summary block of the run in `cfg.paths.output_dir`, if it wrote results.json."""
    if not distributed.is_leader():
        return
    path = Path(cfg.paths.output_dir) / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # it stopped before writing any: the error above says why
    print("\n".join(summary_lines(results, shown(path), seconds)), flush=True)
