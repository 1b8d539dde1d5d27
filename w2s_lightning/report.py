"""The report at the end of a sweep: every job's results.json gathered into one table, the
median PGR per loss, the paper's two pictures per loss, and optionally one W&B run that
carries all of it.

    python -m w2s_lightning.report outputs/multirun/2025-01-01/12-00-00-000000_1234
    python -m w2s_lightning.report <sweep_dir> --wandb     # also log it, as conf/logger/wandb.yaml says

Hydra calls the same code after a multirun through `ReportCallback` (conf/hydra/default.yaml)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from hydra.experimental.callback import Callback
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger(__name__)

RESULTS = "results.json"
PAIR = ["dataset", "weak_model", "strong_model", "loss"]
RUN = [*PAIR, "seed"]
# Always present, so a sweep whose runs were all skipped still yields the same table shape.
LEADING_COLUMNS = [
    "name",
    "dataset",
    "weak_model",
    "strong_model",
    "weak_size",
    "strong_size",
    "loss",
    "seed",
    "status",
    "reason",
    "pgr",
    "pgr_auroc",
]
NUMERIC_COLUMNS = ["weak_size", "strong_size", "pgr", "pgr_auroc", "weak_acc", "student_acc", "ceiling_acc"]
SPREAD = "per-seed median, min–max across seeds"


# ---------------------------------------------------------------------------------------------
# Gathering


def flatten(record: dict, prefix: str = "") -> dict:
    """Nested metric groups become prefixed columns: {"weak": {"acc": x}} -> {"weak_acc": x}."""
    flat = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}_"))
        else:
            flat[name] = value
    return flat


def collect(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per results.json under `sweep_dir` (any depth), skipped runs included."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for path in sorted(sweep_dir.rglob(RESULTS)):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            # One unreadable file must not cost the report of every other run.
            log.warning("ignoring %s: %s", path, err)
            continue
        rows.append({**flatten(record), "run_dir": str(path.parent.relative_to(sweep_dir))})
    frame = pd.DataFrame(rows)
    for column in LEADING_COLUMNS + NUMERIC_COLUMNS:
        if column not in frame:
            frame[column] = np.nan
    for column in NUMERIC_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    ordered = LEADING_COLUMNS + [c for c in frame.columns if c not in LEADING_COLUMNS]
    frame = frame[ordered].sort_values(
        ["dataset", "loss", "weak_size", "weak_model", "strong_size", "strong_model", "seed"],
        kind="stable",
        ignore_index=True,
    )
    warn_duplicates(frame)
    return frame


def warn_duplicates(frame: pd.DataFrame) -> None:
    """results.json records only the axes below; a sweep over anything else (say train.epochs)
    yields rows that look identical and are averaged together in the tables."""
    duplicated = frame[frame.duplicated(RUN, keep=False)]
    if not duplicated.empty:
        log.warning(
            "%d runs share dataset/weak/strong/loss/seed with another run (%s); the report pools them",
            len(duplicated),
            ", ".join(duplicated["run_dir"].astype(str)),
        )


# ---------------------------------------------------------------------------------------------
# Tables


def exclusion(frame: pd.DataFrame) -> pd.Series:
    """Why each run is left out of the median PGR, or "" when it counts. Self-pairs and runs
    whose ceiling does not beat the weak model are left out, as in the paper's figures."""
    why = pd.Series("", index=frame.index)
    why[frame["pgr"].isna()] = "undefined"
    why[frame["weak_model"] == frame["strong_model"]] = "self-pair"
    why[frame["status"] != "done"] = "skipped"
    return why


def counted_runs(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[exclusion(frame) == ""]


def median_pgr_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and loss: the median PGR over all counted (pair, seed) runs, and its spread
    across seeds as the min and max of the per-seed medians over pairs."""
    rows = []
    for (dataset, loss), group in frame.groupby(["dataset", "loss"], sort=True, dropna=False):
        counted = counted_runs(group)
        per_seed = counted.groupby("seed")["pgr"].median()
        excluded = exclusion(group).value_counts()
        rows.append(
            {
                "dataset": dataset,
                "loss": loss,
                "median_pgr": counted["pgr"].median(),
                "seed_median_min": per_seed.min(),
                "seed_median_max": per_seed.max(),
                "seeds": len(per_seed),
                "pairs": len(counted[["weak_model", "strong_model"]].drop_duplicates()),
                "runs": len(counted),
                **{f"excluded_{k}": int(excluded.get(k, 0)) for k in ("self-pair", "undefined", "skipped")},
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "dataset",
            "loss",
            "median_pgr",
            "seed_median_min",
            "seed_median_max",
            "seeds",
            "pairs",
            "runs",
            "excluded_self-pair",
            "excluded_undefined",
            "excluded_skipped",
        ],
    )


def pair_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Finished pairs with their accuracies and PGR averaged over seeds (PGR over the seeds
    where it is defined)."""
    done = frame[frame["status"] == "done"]
    table = done.groupby(PAIR, sort=False, dropna=False).agg(
        weak_size=("weak_size", "first"),
        strong_size=("strong_size", "first"),
        seeds=("seed", "nunique"),
        weak_acc=("weak_acc", "mean"),
        student_acc=("student_acc", "mean"),
        ceiling_acc=("ceiling_acc", "mean"),
        pgr=("pgr", "mean"),
        pgr_seeds=("pgr", "count"),
    )
    return table.reset_index().sort_values(["dataset", "loss", "weak_size", "strong_size"], ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Markdown


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def median_markdown(medians: pd.DataFrame) -> str:
    header = [
        "dataset",
        "loss",
        "median PGR",
        f"PGR spread ({SPREAD})",
        "seeds",
        "pairs",
        "runs",
        "excluded runs: self-pair / undefined / skipped",
    ]
    rows = [
        [
            r.dataset,
            r.loss,
            r.median_pgr,
            "" if math.isnan(r.seed_median_min) else f"{r.seed_median_min:.3f} – {r.seed_median_max:.3f}",
            r.seeds,
            r.pairs,
            r.runs,
            f"{r['excluded_self-pair']} / {r.excluded_undefined} / {r.excluded_skipped}",
        ]
        for _, r in medians.iterrows()
    ]
    return markdown_table(header, rows)


def pair_markdown(pairs: pd.DataFrame) -> str:
    header = [
        "dataset",
        "weak",
        "strong",
        "loss",
        "seeds",
        "weak acc",
        "student acc",
        "ceiling acc",
        "PGR (mean over seeds)",
        "seeds with PGR",
        "note",
    ]
    rows = []
    for _, r in pairs.iterrows():
        note = "self-pair, not in the median" if r.weak_model == r.strong_model else ""
        if r.pgr_seeds < r.seeds:
            note = note or f"ceiling <= weak in {r.seeds - r.pgr_seeds} seed(s)"
        rows.append(
            [
                r.dataset,
                r.weak_model,
                r.strong_model,
                r.loss,
                r.seeds,
                r.weak_acc,
                r.student_acc,
                r.ceiling_acc,
                r.pgr,
                r.pgr_seeds,
                note,
            ]
        )
    return markdown_table(header, rows)


def skipped_markdown(frame: pd.DataFrame) -> str:
    skipped = frame[frame["status"] == "skipped"]
    if skipped.empty:
        return "None."
    lines = []
    for (weak, strong, reason), group in skipped.groupby(["weak_model", "strong_model", "reason"], sort=False):
        losses = ", ".join(sorted(group["loss"].astype(str).unique()))
        seeds = ", ".join(str(s) for s in sorted(group["seed"].unique()))
        lines.append(f"- {weak} → {strong} (loss {losses}; seeds {seeds}): {reason}")
    return "\n".join(lines)


def render_markdown(sweep_dir: Path, frame: pd.DataFrame, figures: dict[str, Path]) -> str:
    names = ", ".join(sorted(frame["name"].dropna().astype(str).unique())) or sweep_dir.name
    done, skipped = (frame["status"] == "done").sum(), (frame["status"] == "skipped").sum()
    parts = [
        f"# Sweep report: {names}",
        f"`{sweep_dir}`: {len(frame)} runs, {done} finished, {skipped} skipped.",
        "## Median PGR",
        "Counted runs: finished, strong model differs from the weak one, and the ceiling beats the weak model "
        "(otherwise PGR is undefined). The median is over all counted (pair, seed) runs; the spread is the "
        "median over pairs computed separately for each seed, min–max across seeds.",
        median_markdown(median_pgr_table(frame)),
        "## Per pair (mean over seeds)",
        pair_markdown(pair_table(frame)),
        "## Skipped pairs",
        skipped_markdown(frame),
    ]
    if figures:
        parts += ["## Figures", "\n\n".join(f"![{name}]({path.name})" for name, path in figures.items())]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------
# Figures


def ordered_models(group: pd.DataFrame, slot: str) -> list[str]:
    sizes = group.groupby(f"{slot}_model", dropna=False)[f"{slot}_size"].first()
    return list(sizes.sort_values(kind="stable").index)


def accuracy_figure(group: pd.DataFrame, title: str) -> Figure:
    """Student accuracy against strong-model size, one line per weak supervisor, and the
    ceiling (the strong model on ground truth) as the line they reach for."""
    done = group[group["status"] == "done"]
    fig = Figure(figsize=(6.4, 4.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    weak_models = ordered_models(done, "weak")
    colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, max(len(weak_models), 1)))
    for color, weak in zip(colors, weak_models):
        points = done[done["weak_model"] == weak].groupby("strong_size")["student_acc"].agg(["mean", "std"])
        ax.errorbar(
            points.index,
            points["mean"],
            yerr=points["std"].fillna(0.0),
            color=color,
            marker="o",
            capsize=3,
            label=f"weak: {weak}",
        )
    ceiling = done.groupby("strong_size")["ceiling_acc"].agg(["mean", "std"])
    ax.errorbar(
        ceiling.index,
        ceiling["mean"],
        yerr=ceiling["std"].fillna(0.0),
        color="black",
        marker="s",
        linestyle="--",
        capsize=3,
        label="ceiling (strong on ground truth)",
    )
    ax.set_xscale("log")
    ax.set_xlabel("strong model size (parameters)")
    ax.set_ylabel("test accuracy (mean over seeds, bars: std)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def heatmap_figure(group: pd.DataFrame, title: str) -> Figure:
    """PGR per weak/strong pair, mean over seeds; blank where it is not counted in the median."""
    pairs = pair_table(counted_runs(group))
    weak_models, strong_models = ordered_models(group, "weak"), ordered_models(group, "strong")
    grid = pairs.pivot_table(index="weak_model", columns="strong_model", values="pgr", aggfunc="mean")
    grid = grid.reindex(index=weak_models, columns=strong_models)
    values = np.ma.masked_invalid(grid.to_numpy(dtype=float))
    fig = Figure(figsize=(1.4 * len(strong_models) + 3.0, 0.9 * len(weak_models) + 2.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_facecolor("0.92")  # blank cells read as "no value", not as a colour of the scale
    # PGR can leave [0, 1]; widen the scale rather than clip so such cells stand out.
    low = min(0.0, float(values.min())) if values.count() else 0.0
    high = max(1.0, float(values.max())) if values.count() else 1.0
    image = ax.imshow(values, cmap="RdYlGn", vmin=low, vmax=high, aspect="auto")
    for (i, j), value in np.ndenumerate(grid.to_numpy(dtype=float)):
        if not math.isnan(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="small")
    ax.set_xticks(range(len(strong_models)), strong_models, rotation=30, ha="right")
    ax.set_yticks(range(len(weak_models)), weak_models)
    ax.set_xlabel("strong model")
    ax.set_ylabel("weak supervisor")
    ax.set_title(f"{title}\nblank: skipped, self-pair or ceiling <= weak", fontsize="medium")
    fig.colorbar(image, ax=ax, label="PGR (mean over seeds)")
    fig.tight_layout()
    return fig


def file_tag(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", str(text))


def write_figures(frame: pd.DataFrame, sweep_dir: Path) -> dict[str, Path]:
    """Both pictures for every loss (for every dataset and loss when the sweep spans datasets)."""
    several_datasets = frame["dataset"].nunique() > 1
    written = {}
    for (dataset, loss), group in frame.groupby(["dataset", "loss"], sort=True, dropna=False):
        if not (group["status"] == "done").any():
            log.info("no finished runs for dataset %s, loss %s: no figures", dataset, loss)
            continue
        tag = file_tag(f"{dataset}_{loss}" if several_datasets else loss)
        title = f"{dataset} · loss {loss}"
        for stem, build in (("accuracy_vs_size", accuracy_figure), ("pgr_heatmap", heatmap_figure)):
            path = sweep_dir / f"{stem}_{tag}.png"
            build(group, title).savefig(path, dpi=120)
            written[path.stem] = path
    return written


# ---------------------------------------------------------------------------------------------
# W&B


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
    names = frame["name"].dropna().astype(str).unique()
    group = cfg.get("group") or (names[0] if len(names) == 1 else sweep_dir.name)
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

    # W&B tables reject NaN mixed into text or bool columns; None reads as a missing cell.
    cells = frame.astype(object).where(frame.notna(), None)
    return wandb.Table(dataframe=cells)


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
        for _, row in medians.iterrows():
            if not math.isnan(row.median_pgr):
                run.summary[f"median_pgr/{row.dataset}/{row.loss}"] = row.median_pgr
        run_dir = Path(run.dir).parent
    finally:
        run.finish()
    return run_dir


# ---------------------------------------------------------------------------------------------
# Entry points


def write_report(sweep_dir: str | Path, wandb_cfg=None) -> dict[str, Path]:
    """Write summary.csv, report.md and the figures into `sweep_dir`; with a W&B config (the
    composed `logger.wandb` node or a dict) also log them as one run. Returns what was written,
    by name; "wandb" is the run's local folder."""
    sweep_dir = Path(sweep_dir)
    frame = collect(sweep_dir)
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
    """Writes the sweep report after the last job of a multirun. Any failure is logged and
    swallowed: the jobs' results are already on disk and the report can be rebuilt with
    `python -m w2s_lightning.report <sweep_dir>`."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = None
        try:
            sweep_dir = config.hydra.sweep.dir
            write_report(sweep_dir, OmegaConf.select(config, "logger.wandb", default=None))
        except Exception:
            log.exception(
                "writing the sweep report for %s failed; the runs are intact, rebuild it with "
                "`python -m w2s_lightning.report %s`",
                sweep_dir,
                sweep_dir or "<sweep_dir>",
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m w2s_lightning.report", description="Write the report of a finished sweep into its folder."
    )
    parser.add_argument("sweep_dir", type=Path, help="the multirun folder (hydra.sweep.dir)")
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log the report as a W&B run with the settings of conf/logger/wandb.yaml "
        "(offline into the sweep folder; WANDB_MODE=online logs live)",
    )
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a folder")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    wandb_cfg = None
    if args.wandb:
        from w2s_lightning.config import CONF_DIR

        wandb_cfg = OmegaConf.load(CONF_DIR / "logger" / "wandb.yaml").wandb
    write_report(args.sweep_dir, wandb_cfg)
    print(median_markdown(median_pgr_table(collect(args.sweep_dir))))


if __name__ == "__main__":
    main()
