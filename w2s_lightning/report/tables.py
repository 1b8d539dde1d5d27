"""A sweep's results.json files gathered into one frame, and the tables computed from it:
median PGR per loss with its spread across seeds, and means per pair."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

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
