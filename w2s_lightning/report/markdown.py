"""report.md: the median-PGR table, the per-pair table, the skipped pairs and the jobs that did
not finish."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from w2s_lightning.report.collect import MISSING, swept_settings, unfinished
from w2s_lightning.report.tables import (
    EXCLUDED,
    SPREAD,
    grouped_settings,
    median_pgr_table,
    method_ranking,
    pair_table,
)

AGGREGATIONS = (
    "Two aggregations. **Median PGR, per seed**: every (pair, seed) run's PGR from its own weak, student "
    "and ceiling accuracy; a run counts when it finished, its strong model differs from the weak one and "
    "its ceiling beats its weak model (otherwise PGR is undefined); the median is over all counted runs, "
    "and the spread is the median over pairs computed separately for each seed, min–max across seeds. "
    "**Median PGR, seed-mean accuracies** (as openai/weak-to-strong's plotting notebook): each weak "
    "model's accuracy and each strong model's ceiling accuracy are first averaged over seeds, every "
    "finished student run's PGR is taken against those means, self-pairs and pairs whose mean ceiling "
    "does not beat the mean weak accuracy are left out, and the median is over the remaining (pair, seed) "
    "runs. Skipped jobs and jobs that did not finish count in neither."
)


def fmt(value, digits: int = 3) -> str:
    if value is None or pd.isna(value):
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def setting(value) -> str:
    """A swept setting as written in the config: 0.0001 must not read as 0.000."""
    return "" if value is None or pd.isna(value) else str(value)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def median_markdown(medians: pd.DataFrame) -> str:
    swept = grouped_settings(medians)
    header = [
        "dataset",
        "loss",
        "method",
        *swept,
        "median PGR, per seed",
        f"PGR spread ({SPREAD})",
        "median PGR, seed-mean accuracies",
        "seeds",
        "pairs",
        "runs per seed / seed-mean",
        "excluded runs: " + " / ".join(EXCLUDED),
    ]
    rows = [
        [
            r.dataset,
            r.loss,
            f"{r.method} (oracle)" if r.oracle else r.method,
            *(setting(r[key]) for key in swept),
            r.median_pgr,
            "" if pd.isna(r.seed_median_min) else f"{r.seed_median_min:.3f} – {r.seed_median_max:.3f}",
            r.median_pgr_mean_acc,
            r.seeds,
            r.pairs,
            f"{r.runs} / {r.runs_mean_acc}",
            " / ".join(str(r[f"excluded_{k}"]) for k in EXCLUDED),
        ]
        for _, r in medians.iterrows()
    ]
    return markdown_table(header, rows)


def ranking_markdown(medians: pd.DataFrame) -> str:
    """Methods (with their loss) ranked by median PGR per seed; oracles listed apart, unranked."""
    ranked = method_ranking(medians)
    swept = grouped_settings(medians)
    header = ["rank", "dataset", "method", "loss", *swept, "median PGR, per seed", f"spread ({SPREAD})", "seeds"]
    rows, rank = [], 0
    for _, r in ranked.iterrows():
        rank += not r.oracle
        spread = "" if pd.isna(r.seed_median_min) else f"{r.seed_median_min:.3f} – {r.seed_median_max:.3f}"
        label = "oracle, not ranked" if r.oracle else rank
        rows.append(
            [label, r.dataset, r.method, r.loss, *(setting(r[k]) for k in swept), r.median_pgr, spread, r.seeds]
        )
    return markdown_table(header, rows)


def pair_markdown(pairs: pd.DataFrame, swept: list[str]) -> str:
    header = ["dataset", "weak", "strong", "loss", "method", *swept, "seeds", "weak acc", "student acc", "ceiling acc"]
    calibration = [c for c in ("weak_ece", "student_ece", "ceiling_ece") if c in pairs]
    header += [c.replace("_", " ").replace("ece", "ECE") for c in calibration]
    header += ["PGR (mean over seeds)", "seeds with PGR", "note"]
    rows = []
    for _, r in pairs.iterrows():
        note = "self-pair, not in the median" if r.weak_model == r.strong_model else ""
        if r.pgr_seeds < r.seeds:
            note = note or f"ceiling <= weak in {r.seeds - r.pgr_seeds} seed(s)"
        pair = [r.dataset, r.weak_model, r.strong_model, r.loss, r.method, *(setting(r[key]) for key in swept)]
        scores = [r.weak_acc, r.student_acc, r.ceiling_acc, *(r[c] for c in calibration)]
        rows.append([*pair, r.seeds, *scores, r.pgr, r.pgr_seeds, note])
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


def unfinished_markdown(frame: pd.DataFrame, swept: list[str]) -> str:
    jobs = unfinished(frame)
    if jobs.empty:
        return "None."
    lines = []
    for _, r in jobs.iterrows():
        if r.status == MISSING:
            what = f"overrides: {r.overrides}" if setting(r.get("overrides")) else "no overrides recorded"
        else:
            settings = "".join(f", {key}={setting(r[key])}" for key in swept if setting(r[key]))
            what = f"{r.weak_model} → {r.strong_model}, loss {r.loss}, method {r.method}, seed {r.seed}{settings}"
        if r.status == "failed":
            why = f"failed in stage {setting(r.failed_stage) or '?'}: {setting(r.error)}"
        elif r.status == "running":
            why = "still marked running: it crashed or was killed"
        else:
            why = setting(r.error) or f"status {setting(r.status) or 'not recorded'}"
        lines.append(f"- `{r.run_dir}` ({what}): {why}")
    return "\n".join(lines)


def render_markdown(sweep_dir: Path, frame: pd.DataFrame, figures: dict[str, Path]) -> str:
    names = ", ".join(sorted(frame["name"].dropna().astype(str).unique())) or sweep_dir.name
    done, skipped = (frame["status"] == "done").sum(), (frame["status"] == "skipped").sum()
    swept = swept_settings(frame)
    parts = [
        f"# Sweep report: {names}",
        f"`{sweep_dir}`: {len(frame)} jobs, {done} finished, {skipped} skipped, "
        f"{len(frame) - done - skipped} did not finish.",
    ]
    if swept:
        parts.append(f"Settings this sweep varied besides models, loss and seed (a column each): {', '.join(swept)}.")
    parts += [
        "## Median PGR",
        AGGREGATIONS,
        median_markdown(medians := median_pgr_table(frame)),
        "## Methods ranked by median PGR",
        "Each method with its loss, best first; methods that read ground truth (oracles) are listed after "
        "the others and not ranked.",
        ranking_markdown(medians),
        "## Per pair (mean over seeds)",
        pair_markdown(pair_table(frame), swept),
        "## Skipped pairs",
        skipped_markdown(frame),
        "## Jobs that did not finish",
        unfinished_markdown(frame, swept),
    ]
    if figures:
        parts += ["## Figures", "\n\n".join(f"![{name}]({path.name})" for name, path in figures.items())]
    return "\n\n".join(parts) + "\n"
