"""The user's own data files (jsonl, csv, parquet) read into a frame, with every way a file
can be wrong turned into a message that names the file and the fix."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from w2s_lightning.errors import DatasetError


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset file {path} does not exist; fix: set dataset.path to your file")
    readers = {".jsonl": lambda p: pd.read_json(p, lines=True), ".csv": pd.read_csv}
    readers[".parquet"] = pd.read_parquet
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DatasetError(f"dataset file {path} has suffix '{path.suffix}'; fix: use .jsonl, .csv or .parquet")
    return reader(path)


def validate_frame(frame: pd.DataFrame, where: str, text_column: str, label_column: str) -> None:
    for column, knob in ((text_column, "text_column"), (label_column, "label_column")):
        if column not in frame.columns:
            raise DatasetError(
                f"{where}: no column '{column}' (columns: {list(frame.columns)}); "
                f"fix: set dataset.{knob} to the right column"
            )
    labels = pd.to_numeric(frame[label_column], errors="coerce")
    bad = frame[~labels.isin([0, 1])]
    if len(bad):
        raise DatasetError(
            f"{where}: column '{label_column}' must hold labels 0 or 1, found "
            f"{bad[label_column].head(3).tolist()} (row {bad.index[0]}); fix: map your classes to 0/1"
        )
    text = frame[text_column]
    empty = frame[text.isna() | (text.astype(str).str.strip() == "")]
    if len(empty):
        raise DatasetError(
            f"{where}: column '{text_column}' is empty in {len(empty)} rows (first: row "
            f"{empty.index[0]}); fix: drop or fill those rows"
        )
