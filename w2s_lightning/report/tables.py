"""The tables computed from the collected frame: median PGR per loss and swept setting under two
aggregations, and means per pair."""

from __future__ import annotations

import pandas as pd

from w2s_lightning.report.collect import PAIR, swept_settings, with_results

SPREAD = "per-seed median, min–max across seeds"
EXCLUDED = ("self-pair", "undefined", "skipped", "unfinished")
MEDIAN_COLUMNS = [
    "median_pgr",
    "seed_median_min",
    "seed_median_max",
    "median_pgr_mean_acc",
    "seeds",
    "pairs",
    "runs",
    "runs_mean_acc",
    *(f"excluded_{k}" for k in EXCLUDED),
    "oracle",
]


def exclusion(frame: pd.DataFrame) -> pd.Series:
    """Why each run is left out of the per-seed median PGR, or "" when it counts. Self-pairs and
    runs whose ceiling does not beat the weak model are left out, as in the paper's figures."""
    why = pd.Series("", index=frame.index)
    why[frame["pgr"].isna()] = "undefined"
    why[frame["weak_model"] == frame["strong_model"]] = "self-pair"
    why[frame["status"] == "skipped"] = "skipped"
    why[~frame["status"].isin(["done", "skipped"])] = "unfinished"
    return why


def counted_runs(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[exclusion(frame) == ""]


def mean_acc_pgr(group: pd.DataFrame) -> pd.Series:
    """PGR as openai/weak-to-strong's plotting notebook computes it: each weak model's accuracy
    and each strong model's ceiling are averaged over seeds first, and every finished student
    run is measured against those means. Self-pairs and pairs whose mean ceiling does not beat
    the mean weak accuracy are left out. One value per counted run."""
    done = group[group["status"] == "done"]
    # Average within a seed first so a model seen in more pairs for one seed does not weigh it more.
    weak = done.groupby(["weak_model", "seed"])["weak_acc"].mean().groupby("weak_model").mean()
    ceiling = done.groupby(["strong_model", "seed"])["ceiling_acc"].mean().groupby("strong_model").mean()
    # astype: a group without finished runs maps to an empty series of the key's (text) dtype.
    w, c = done["weak_model"].map(weak).astype(float), done["strong_model"].map(ceiling).astype(float)
    counted = (done["weak_model"] != done["strong_model"]) & (c > w)
    return ((done["student_acc"] - w) / (c - w))[counted].dropna()


def median_pgr_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, loss and swept setting: (a) the median PGR over all counted (pair, seed)
    runs, each run's PGR from its own accuracies, with its spread across seeds as the min and
    max of the per-seed medians over pairs; (b) the median of `mean_acc_pgr` over its runs."""
    keys = ["dataset", "loss", "method", *swept_settings(frame)]
    rows = []
    for values, group in with_results(frame).groupby(keys, sort=True, dropna=False):
        counted = counted_runs(group)
        per_seed = counted.groupby("seed")["pgr"].median()
        by_mean_acc = mean_acc_pgr(group)
        excluded = exclusion(group).value_counts()
        rows.append(
            {
                **dict(zip(keys, values)),
                "median_pgr": counted["pgr"].median(),
                "seed_median_min": per_seed.min(),
                "seed_median_max": per_seed.max(),
                "median_pgr_mean_acc": by_mean_acc.median(),
                "seeds": len(per_seed),
                "pairs": len(counted[["weak_model", "strong_model"]].drop_duplicates()),
                "runs": len(counted),
                "runs_mean_acc": len(by_mean_acc),
                "oracle": bool(group["oracle"].any()),
                **{f"excluded_{k}": int(excluded.get(k, 0)) for k in EXCLUDED},
            }
        )
    return pd.DataFrame(rows, columns=keys + MEDIAN_COLUMNS)


def grouped_settings(medians: pd.DataFrame) -> list[str]:
    """The swept settings a median table is grouped by: its columns between loss and the medians."""
    return list(medians.columns[3 : medians.columns.get_loc("median_pgr")])


def method_ranking(medians: pd.DataFrame) -> pd.DataFrame:
    """Every (loss, method, swept setting) row of the median table, best median PGR (per seed)
    first; methods that read ground truth (oracles) after all others, whatever their score."""
    ranked = medians.assign(has_pgr=medians["median_pgr"].notna())
    ranked = ranked.sort_values(["dataset", "oracle", "has_pgr", "median_pgr"], ascending=[True, True, False, False])
    return ranked.drop(columns="has_pgr").reset_index(drop=True)


def pair_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Finished pairs with their accuracies and PGR averaged over seeds (PGR over the seeds
    where it is defined)."""
    done = frame[frame["status"] == "done"]
    table = done.groupby(PAIR + swept_settings(frame), sort=True, dropna=False).agg(
        weak_size=("weak_size", "first"),
        strong_size=("strong_size", "first"),
        seeds=("seed", "nunique"),
        weak_acc=("weak_acc", "mean"),
        student_acc=("student_acc", "mean"),
        ceiling_acc=("ceiling_acc", "mean"),
        # Calibration (expected calibration error), where results.json records it.
        **{f"{n}_ece": (f"{n}_ece", "mean") for n in ("weak", "student", "ceiling") if f"{n}_ece" in done},
        pgr=("pgr", "mean"),
        pgr_seeds=("pgr", "count"),
    )
    return table.reset_index().sort_values(
        ["dataset", "loss", "method", "weak_size", "strong_size"], kind="stable", ignore_index=True
    )
