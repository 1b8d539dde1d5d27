"""The paper's two pictures per loss: accuracy against strong-model size, and PGR per pair."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from w2s_lightning.report.collect import swept_settings, with_results
from w2s_lightning.report.tables import counted_runs, pair_table

log = logging.getLogger(__name__)


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
    """Both pictures for every loss and swept setting (and dataset, when the sweep spans several);
    runs that differ in a swept setting never share a picture."""
    several_datasets = frame["dataset"].nunique() > 1
    swept = swept_settings(frame)
    written = {}
    for values, group in with_results(frame).groupby(["dataset", "loss", *swept], sort=True, dropna=False):
        dataset, loss, settings = values[0], values[1], [f"{k}={v}" for k, v in zip(swept, values[2:])]
        if not (group["status"] == "done").any():
            log.info("no finished runs for dataset %s, loss %s %s: no figures", dataset, loss, " ".join(settings))
            continue
        tag = file_tag("_".join([str(dataset)] * several_datasets + [str(loss), *settings]))
        title = " · ".join([str(dataset), f"loss {loss}", *settings])
        for stem, build in (("accuracy_vs_size", accuracy_figure), ("pgr_heatmap", heatmap_figure)):
            path = sweep_dir / f"{stem}_{tag}.png"
            build(group, title).savefig(path, dpi=120)
            written[path.stem] = path
    return written
