"""A sweep folder read into one frame: a row per job, finished or not, with the config keys the
sweep varied beyond the named axes as columns of their own."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

log = logging.getLogger(__name__)

RESULTS = "results.json"
MISSING = "missing"  # status of a job folder without results.json: killed before writing one
FINISHED = ("done", "skipped")
PAIR = ["dataset", "weak_model", "strong_model", "loss", "method"]
RUN = [*PAIR, "seed"]
CONFIG = "config."
# Keys that differ between jobs without changing what a job computes (as the stage cache keys
# leave them out), besides everything under cache.*.
BOOKKEEPING = ("name", "save_weights", "dataset.local_path")
# Always present, so a sweep whose runs were all skipped still yields the same table shape.
IDENTITY = ["name", "dataset", "weak_model", "strong_model", "weak_size", "strong_size", "loss", "method", "seed"]
OUTCOME = ["status", "reason", "error", "failed_stage", "pgr", "pgr_auroc"]
NUMERIC_COLUMNS = ["weak_size", "strong_size", "pgr", "pgr_auroc", "weak_acc", "student_acc", "ceiling_acc"]


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


def read_result(path: Path, sweep_dir: Path) -> tuple[dict, dict] | None:
    """The metrics row and the config of one results.json (the config is {} in files written
    before it was recorded)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        # One unreadable file must not cost the report of every other run.
        log.warning("ignoring %s: %s", path, err)
        return None
    config = record.pop("config", None) or {}
    # Values must be hashable to be grouped on; the contract already writes lists as JSON text.
    config = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in config.items()}
    return {**flatten(record), "run_dir": str(path.parent.relative_to(sweep_dir))}, config


def missing_jobs(sweep_dir: Path) -> list[tuple[dict, dict]]:
    """Hydra job folders (they hold .hydra/) that have no results.json anywhere below them."""
    rows = []
    for hydra_dir in sorted(p for p in sweep_dir.rglob(".hydra") if p.is_dir()):
        job = hydra_dir.parent
        if any(job.rglob(RESULTS)):
            continue
        overrides_file = hydra_dir / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else None
        row = {
            "status": MISSING,
            "error": "no results.json: the job was killed before writing one",
            "overrides": " ".join(overrides or []),
            "run_dir": str(job.relative_to(sweep_dir)),
        }
        rows.append((row, {}))
    return rows


def collect(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job under `sweep_dir` (any depth): every results.json, skipped and
    unfinished ones included, and every job folder left without one."""
    sweep_dir = Path(sweep_dir)
    found = [read_result(path, sweep_dir) for path in sorted(sweep_dir.rglob(RESULTS))]
    jobs = [job for job in found if job is not None] + missing_jobs(sweep_dir)
    frame = pd.DataFrame([row for row, _ in jobs])
    # object dtype keeps integer settings integers when some jobs lack them.
    config = pd.DataFrame([cfg for _, cfg in jobs], index=frame.index, dtype=object).add_prefix(CONFIG)
    frame = pd.concat([frame, config], axis=1)
    for column in IDENTITY + OUTCOME + NUMERIC_COLUMNS:
        if column not in frame:
            frame[column] = np.nan
    for column in NUMERIC_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").astype("Int64")
    # Results written before methods were recorded ran the plain weak supervisor.
    frame["method"] = frame["method"].where(frame["method"].notna() | (frame["status"] == MISSING), "weak")
    frame["oracle"] = frame["oracle"].fillna(False).astype(bool) if "oracle" in frame else False
    swept = swept_settings(frame)
    for key in swept:
        # "" rather than NaN for jobs without the key: grouping on NaN turns 1 and 2 into 1.0 and 2.0.
        frame[key] = frame[CONFIG + key].fillna("")
    leading = IDENTITY + swept + OUTCOME
    rest = [c for c in frame.columns if c not in leading and not c.startswith(CONFIG)]
    frame = frame[leading + rest + [c for c in frame.columns if c.startswith(CONFIG)]]
    frame = frame.sort_values(
        ["dataset", "loss", "method", "weak_size", "weak_model", "strong_size", "strong_model", "seed"],
        kind="stable",
        ignore_index=True,
    )
    warn_duplicates(frame, swept)
    return frame


def swept_settings(frame: pd.DataFrame) -> list[str]:
    """Config keys that take more than one value among jobs with the same dataset, models, loss,
    method and seed: knobs the named columns cannot tell apart (train.epochs=1,2; a weak_model.lr set
    for some jobs of a model only). Keys that follow from those columns (weak_model.*, loss.*,
    seed) never vary within such a group, so they stay out."""
    keys = [c[len(CONFIG) :] for c in frame.columns if c.startswith(CONFIG)]
    keys = [k for k in keys if k not in BOOKKEEPING and not k.startswith("cache.")]
    if not keys:
        return []
    values = frame.groupby(RUN, dropna=False)[[CONFIG + k for k in keys]].nunique().max()
    return sorted(k for k in keys if values[CONFIG + k] > 1)


def with_results(frame: pd.DataFrame) -> pd.DataFrame:
    """Jobs that wrote results.json: the others belong to no dataset or loss."""
    return frame[frame["status"] != MISSING]


def unfinished(frame: pd.DataFrame) -> pd.DataFrame:
    """Jobs that failed, crashed or were killed (still "running"), or never wrote results.json."""
    return frame[~frame["status"].isin(FINISHED)]


def warn_duplicates(frame: pd.DataFrame, swept: list[str]) -> None:
    """Jobs that agree on every recorded axis and swept setting (two runs of one job, or files
    written before the config was recorded) cannot be told apart and are pooled."""
    jobs = with_results(frame)
    duplicated = jobs[jobs.duplicated(RUN + swept, keep=False)]
    if not duplicated.empty:
        log.warning(
            "%d runs share dataset/weak/strong/loss/seed and every swept setting with another run (%s); "
            "the report pools them",
            len(duplicated),
            ", ".join(duplicated["run_dir"].astype(str)),
        )
