"""The paper's two pictures per dataset (method and swept setting): test accuracy against
strong-model size (Burns et al. 2023, Fig. 3) with a line style per loss, and PGR per weak/strong
pair, one panel per loss. Each is saved as a 300-dpi PNG and a PDF with the same stem."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from w2s_lightning.report.collect import swept_settings, with_results
from w2s_lightning.report.tables import counted_runs

log = logging.getLogger(__name__)

DPI = 300  # print quality; the PDF beside each PNG is the vector copy for the paper
# Loss line styles in the order a study usually reads them: the baseline first, solid.
LOSS_ORDER = ("xent", "logconf", "product", "kl")
LINE_STYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (1, 3)), (0, (3, 1, 1, 1))]
# Sequential (weak supervisors, ordered by size) and diverging (PGR around 0) palettes that read
# under the common colour-vision deficiencies; RdBu is on ColorBrewer's colour-blind-safe list.
WEAK_PALETTE, PGR_PALETTE = "viridis", "RdBu"
DODGE = 0.012  # decades between series at one model size, so their error bars do not overlap


def ordered_models(group: pd.DataFrame, slot: str) -> list[str]:
    sizes = group.groupby(f"{slot}_model", dropna=False)[f"{slot}_size"].first()
    return list(sizes.sort_values(kind="stable").index)


def ordered_losses(group: pd.DataFrame) -> list[str]:
    """Loss labels, the baseline first: xent, logconf, product, kl, then others by name."""

    def rank(label: str) -> tuple[int, str]:
        base = label.split("(")[0]
        return (LOSS_ORDER.index(base) if base in LOSS_ORDER else len(LOSS_ORDER), label)

    return sorted(group["loss"].dropna().astype(str).unique(), key=rank)


def shown(label: str, width: int = 28) -> str:
    """A loss label as a figure shows it: long numbers to 3 significant digits (a sweeper's
    suggestions carry 16), and its parameters on a line of their own when it is long."""
    label = re.sub(r"\d+\.\d{4,}(?:e-?\d+)?", lambda m: f"{float(m.group()):.3g}", label)
    return label.replace("(", "\n(", 1) if len(label) > width else label


def weak_colors(weak_models: list[str]) -> dict[str, tuple]:
    """One colour per weak supervisor, dark to light by size; viridis's palest yellow is left out,
    as it fades into the white background."""
    stops = np.linspace(0.1, 0.85, len(weak_models)) if len(weak_models) > 1 else [0.45]
    return dict(zip(weak_models, matplotlib.colormaps[WEAK_PALETTE](stops)))


def seed_stats(runs: pd.DataFrame, by: str, value: str) -> pd.DataFrame:
    """Mean and std over seeds of `value` per `by`; runs of one seed are averaged first, so a
    model seen in more pairs does not weigh its seed more."""
    per_seed = runs.groupby([by, "seed"], dropna=False)[value].mean()
    return per_seed.groupby(level=0).agg(["mean", "std"]).fillna({"std": 0.0})


def size_ticks(ax, done: pd.DataFrame) -> None:
    """Model names, not parameter counts, under the x axis; models of one size share a tick."""
    sizes = pd.concat(
        [
            done[["weak_model", "weak_size"]].set_axis(["model", "size"], axis=1),
            done[["strong_model", "strong_size"]].set_axis(["model", "size"], axis=1),
        ]
    ).drop_duplicates()
    names = sizes.groupby("size")["model"].agg(lambda m: "\n".join(sorted(map(str, m))))
    ax.set_xscale("log")
    ax.set_xticks(names.index, names.to_list(), rotation=30, ha="right", fontsize="small")
    ax.xaxis.set_minor_locator(NullLocator())
    low, high = math.log10(names.index.min()), math.log10(names.index.max())
    pad = max(0.15, 0.06 * (high - low))
    ax.set_xlim(10 ** (low - pad), 10 ** (high + pad))


def accuracy_figure(group: pd.DataFrame, title: str) -> Figure:
    """Student test accuracy against strong-model size: a colour per weak supervisor, a line style
    per loss, the weak supervisor's own accuracy as a star at its own size, and the ceiling (the
    strong model on ground truth) as a black line. Means over seeds, bars one std. Every series is
    an errorbar container on the axes; the legend outside them uses proxy artists."""
    done = group[(group["status"] == "done") & group["weak_size"].notna() & group["strong_size"].notna()]
    weak_models, losses = ordered_models(done, "weak"), ordered_losses(done)
    colors, styles = weak_colors(weak_models), dict(zip(losses, LINE_STYLES * len(losses)))
    fig = Figure(figsize=(7.5, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    weak_own = seed_stats(done, "weak_model", "weak_acc")
    weak_size = done.groupby("weak_model")["weak_size"].first()
    series = [(weak, loss) for weak in weak_models for loss in losses]
    offsets = {pair: DODGE * (i - (len(series) - 1) / 2) for i, pair in enumerate(series)}
    for (weak, loss), offset in offsets.items():
        runs = done[(done["weak_model"] == weak) & (done["loss"] == loss)]
        if runs.empty:
            continue
        points = seed_stats(runs, "strong_size", "student_acc")
        x = points.index.to_numpy(dtype=float) * 10**offset
        ax.errorbar(x, points["mean"], yerr=points["std"], color=colors[weak], linestyle=styles[loss], marker="o")
        ax.containers[-1].set_label(f"student: {weak}, {loss}")
        # As in the paper, each line starts at its supervisor's own accuracy: a pair's gain reads
        # as the rise from the star, and a one-pair series still shows its loss's line style.
        start = [weak_size[weak], x[0]], [weak_own.loc[weak, "mean"], points["mean"].iloc[0]]
        ax.plot(*start, color=colors[weak], linestyle=styles[loss], linewidth=1.0, alpha=0.6)
    ceiling = seed_stats(done, "strong_size", "ceiling_acc")
    ax.errorbar(ceiling.index, ceiling["mean"], yerr=ceiling["std"], color="black", marker="s", zorder=3)
    ax.containers[-1].set_label("ceiling")
    for weak in weak_models:
        ax.errorbar(
            weak_size[weak],
            weak_own.loc[weak, "mean"],
            yerr=weak_own.loc[weak, "std"],
            color=colors[weak],
            marker="*",
            markersize=14,
            markeredgecolor="black",
            linestyle="none",
            zorder=4,
        )
        ax.containers[-1].set_label(f"weak alone: {weak}")
    size_ticks(ax, done)
    ax.set_xlabel("model, placed by parameter count (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=colors[w], marker="o", label=f"weak: {w}") for w in weak_models]
    handles += [Line2D([], [], color="0.3", linestyle=styles[loss], label=f"loss: {shown(loss)}") for loss in losses]
    handles += [
        Line2D([], [], color="black", marker="s", label="ceiling: strong model\ntrained on ground truth"),
        Line2D(
            [],
            [],
            color="0.6",
            marker="*",
            markersize=12,
            markeredgecolor="black",
            linestyle="none",
            label="weak supervisor alone,\nat its own size",
        ),
    ]
    seeds = done["seed"].nunique()
    fig.legend(
        handles=handles,
        loc="outside right upper",
        fontsize="small",
        title=f"mean over {seeds} seed{'s' * (seeds != 1)}\nbars: std",
        title_fontsize="small",
    )
    return fig


def cell_notes(group: pd.DataFrame, loss: str) -> tuple[pd.Series, pd.Series]:
    """Per weak/strong pair under `loss`: the mean PGR over the seeds where it counts, and the text
    for its cell (the value, with k/n when only k of n finished seeds count; else why it is blank)."""
    runs = group[group["loss"] == loss]
    counted = counted_runs(runs)
    pgr = counted.groupby(["weak_model", "strong_model"])["pgr"].agg(["mean", "count"])
    seeds = runs[runs["status"] == "done"].groupby(["weak_model", "strong_model"])["seed"].nunique()
    notes = {}
    for (weak, strong), status in runs.groupby(["weak_model", "strong_model"])["status"]:
        if (weak, strong) in pgr.index:
            mean, count = pgr.loc[(weak, strong)]
            total = seeds.get((weak, strong), count)
            notes[weak, strong] = f"{mean:.2f}" + (f"\n{int(count)}/{total} seeds" if count < total else "")
        elif weak == strong:
            notes[weak, strong] = "self"
        elif (status == "skipped").all():
            notes[weak, strong] = "skipped"
        elif (status == "done").any():
            notes[weak, strong] = "ceiling\n≤ weak"
        else:
            notes[weak, strong] = "unfinished"
    return pgr["mean"], pd.Series(notes, dtype=object)


def text_color(cell: tuple) -> str:
    """White on dark cells, black on light ones (by relative luminance), grey on blank ones."""
    if cell[3] == 0:  # masked (no PGR): shown as the axes' grey background
        return "0.35"
    luminance = 0.2126 * cell[0] + 0.7152 * cell[1] + 0.0722 * cell[2]
    return "white" if luminance < 0.45 else "black"


def heatmap_figure(group: pd.DataFrame, title: str) -> Figure:
    """PGR per weak/strong pair, mean over seeds, one panel per loss on one colour scale from -1 to
    1 centred at 0 (PGR 0: no better than the weak supervisor, 1: the ceiling). Grey cells have no
    PGR, and say why: the pair was skipped, is a self-pair, or its ceiling never beat the weak model."""
    weak_models, strong_models = ordered_models(group, "weak"), ordered_models(group, "strong")
    losses = ordered_losses(group)
    cells = {loss: cell_notes(group, loss) for loss in losses}
    grids = {
        loss: pgr.unstack().reindex(index=weak_models, columns=strong_models) if len(pgr) else None
        for loss, (pgr, _) in cells.items()
    }
    # One fixed scale for every figure, so colours compare across sweeps; a PGR beyond it takes
    # the end colour and the cell still prints its value.
    norm, cmap = Normalize(vmin=-1.0, vmax=1.0), matplotlib.colormaps[PGR_PALETTE]
    cols = min(len(losses), 3)
    rows = math.ceil(len(losses) / cols)
    panel = (1.0 * len(strong_models) + 1.8, 0.6 * len(weak_models) + 1.5)
    fig = Figure(figsize=(panel[0] * cols + 1.2, panel[1] * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for num, (ax, loss) in enumerate(zip(axes, losses)):
        grid = grids[loss]
        numbers = np.full((len(weak_models), len(strong_models)), np.nan) if grid is None else grid.to_numpy(float)
        ax.set_facecolor("0.85")  # no PGR reads as "no value", not as a colour of the scale
        image = ax.imshow(np.ma.masked_invalid(numbers), cmap=cmap, norm=norm, aspect="auto")
        for (weak, strong), text in cells[loss][1].items():
            i, j = weak_models.index(weak), strong_models.index(strong)
            ax.text(j, i, text, ha="center", va="center", fontsize="small", color=text_color(cmap(norm(numbers[i, j]))))
        ax.set_xticks(range(len(strong_models)), strong_models, rotation=30, ha="right", fontsize="small")
        ax.set_yticks(range(len(weak_models)), weak_models, fontsize="small")
        ax.set_xlabel("strong model")
        ax.set_ylabel("weak supervisor" if num % cols == 0 else "")
        ax.set_title(f"loss {shown(loss)}", fontsize="medium")
    for ax in axes[len(losses) :]:
        ax.set_visible(False)
    label = "PGR, mean over seeds\n(0: weak, 1: ceiling)"
    fig.colorbar(image, ax=list(axes[: len(losses)]), label=label, extend="both")
    fig.suptitle(title, fontsize="medium")
    return fig


def file_tag(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", str(text))


def save(fig: Figure, png: Path) -> None:
    """The figure as a PNG and a PDF with the same stem; no creation date in the PDF, so rebuilding
    a report leaves unchanged figures byte for byte the same."""
    fig.savefig(png, dpi=DPI, bbox_inches="tight")
    fig.savefig(png.with_suffix(".pdf"), bbox_inches="tight", metadata={"CreationDate": None})


def write_figures(frame: pd.DataFrame, sweep_dir: Path) -> dict[str, Path]:
    """Both pictures for every dataset, weak-label method (where recorded) and swept setting, all
    losses in each: runs that differ in any of these never share a picture. Returns the PNGs by
    stem (report.md and W&B show those); each has a PDF beside it."""
    named_axes = ["dataset", "method"] if "method" in frame else ["dataset"]
    swept = swept_settings(frame)
    # In file names only where the sweep has several; in titles, a method other than the plain one.
    in_name = [k for k in named_axes if frame[k].nunique() > 1]
    written = {}
    for values, group in with_results(frame).groupby([*named_axes, *swept], sort=True, dropna=False):
        named = dict(zip([*named_axes, *swept], values))
        settings = [f"{k}={named[k]}" for k in swept]
        tag = file_tag("_".join([str(named[k]) for k in in_name] + settings))
        method = named.get("method", "weak")
        title = " · ".join([str(named["dataset"]), *([f"method {method}"] if method != "weak" else []), *settings])
        if not (group["status"] == "done").any():
            log.info("no finished runs for %s: no figures", title)
            continue
        for stem, build in (("accuracy_vs_size", accuracy_figure), ("pgr_heatmap", heatmap_figure)):
            name = f"{stem}_{tag}" if tag else stem
            save(build(group, title), sweep_dir / f"{name}.png")
            written[name] = sweep_dir / f"{name}.png"
    return written
