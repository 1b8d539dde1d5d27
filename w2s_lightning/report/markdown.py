"""report.md: the median-PGR table, the per-pair table and the skipped pairs."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from w2s_lightning.report.tables import SPREAD, median_pgr_table, pair_table


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
