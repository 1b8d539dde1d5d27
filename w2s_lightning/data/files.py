"""The user's own data files (jsonl, csv, parquet) read into a frame, with every way a file
can be wrong turned into a message that names the file, the place in it and the fix.

Messages never quote the file's contents (texts, labels, ids, column names, which are data in
a CSV without a header): they say the line or row and the column, so logs stay clean of data."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pandas as pd

from w2s_lightning.errors import DatasetError

SUFFIXES = ".jsonl, .csv or .parquet"
JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false"}


def read_table(path: str | Path, knob: str = "dataset.path") -> pd.DataFrame:
    """Read a `.jsonl`, `.csv` or `.parquet` file; `knob` is the setting that named it.
    `frame.attrs` keeps the format and the blank lines skipped, so later messages can say where a
    row is (JSONL: its line; CSV: its row below the header)."""
    path = Path(path).expanduser()
    where = f"dataset file {path}"
    if not path.exists():
        raise DatasetError(f"{where} does not exist; fix: set {knob} to your file")
    if path.is_dir():
        raise DatasetError(f"{where} is a folder; fix: set {knob} to a {SUFFIXES} file")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv", ".parquet"):
        raise DatasetError(f"{where} has suffix '{path.suffix}'; fix: use {SUFFIXES}")
    if path.stat().st_size == 0:
        raise DatasetError(f"{where} is empty (0 bytes); fix: set {knob} to a file with examples")
    frame = _read_parquet(path, where) if suffix == ".parquet" else _read_text(path, where, suffix)
    if len(frame) == 0:
        raise DatasetError(f"{where} has no rows (at most a header); fix: add examples, one per row")
    frame.attrs["format"] = suffix[1:]
    return frame


def _read_parquet(path: Path, where: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise DatasetError(f"{where} is not a readable parquet file; fix: write it with DataFrame.to_parquet") from err


def _read_text(path: Path, where: str, suffix: str) -> pd.DataFrame:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark, as Excel writes, is not an error
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DatasetError(
            f"{where} is not UTF-8 text (byte offset {err.start}, line {line}); fix: save it as UTF-8"
        ) from err
    if not text.strip():
        raise DatasetError(f"{where} holds only whitespace; fix: add examples, one per row")
    return _parse_jsonl(text, where) if suffix == ".jsonl" else _parse_csv(text, where)


def _parse_jsonl(text: str, where: str) -> pd.DataFrame:
    """Line by line, so a bad line is named (pandas does not say which line failed)."""
    records, blank = [], []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit in a string
        if not line.strip():
            blank.append(number)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(
                f"{where}: line {number} is not valid JSON ({err.msg}, column {err.colno}); "
                'fix: write one JSON object per line, e.g. {"text": "...", "label": 1}'
            ) from err
        if not isinstance(record, dict):
            kind = "null" if record is None else JSON_TYPES.get(type(record), type(record).__name__)
            raise DatasetError(
                f"{where}: line {number} holds {kind}, not a JSON object; "
                'fix: write one JSON object per line, e.g. {"text": "...", "label": 1}'
            )
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    # Kept small (usually the last line only): pandas copies attrs into every frame derived from this one.
    frame.attrs["skipped_lines"] = tuple(blank)
    return frame


def _parse_csv(text: str, where: str) -> pd.DataFrame:
    try:
        return pd.read_csv(io.StringIO(text))
    except pd.errors.ParserError as err:
        # pandas counts lines from 1 ("Expected 2 fields in line 3") and rows from 0 ("EOF inside
        # string starting at row 2"); both become the line an editor shows.
        line = re.search(r"line (\d+)", str(err))
        row = re.search(r"row (\d+)", str(err))
        at = f" at line {line[1]}" if line else f" at line {int(row[1]) + 1}" if row else ""
        raise DatasetError(
            f"{where} is not valid CSV{at} (a wrong number of fields or an unclosed quote); "
            'fix: quote fields that contain commas or quotes ("a, b"), as csv writers do'
        ) from err


def validate_frame(
    frame: pd.DataFrame,
    where: str,
    text_column: str,
    label_column: str,
    id_column: str | None = None,
    group_column: str | None = None,
) -> None:
    """Raise a `DatasetError` naming the column, the row and the fix for the first problem."""
    if len(frame) == 0:
        raise DatasetError(f"{where} has no rows; fix: add examples, one per row")
    columns = {"text_column": text_column, "label_column": label_column}
    columns |= {"id_column": id_column, "group_column": group_column}  # optional: None means unused
    for knob, column in columns.items():
        if column is not None and column not in frame.columns:
            null = ", or null" if knob in ("id_column", "group_column") else ""
            raise DatasetError(
                f"{where}: no column '{column}' (dataset.{knob}; the file has {len(frame.columns)} columns); "
                f"fix: set dataset.{knob} to one of the file's columns{null}"
            )

    for column, fix in (
        (text_column, "drop or fill those rows"),
        (label_column, "give every row a label, 0 or 1, or drop those rows"),
        (id_column, "give every row an id, or set dataset.id_column=null to number the rows"),
        (group_column, "give every row its group, or set dataset.group_column=null"),
    ):
        if column is not None and (empty := _blank(frame[column])).any():
            raise DatasetError(
                f"{where}: column '{column}' is empty in {_place(frame, _first(empty))} "
                f"({_rows(empty)} in all); fix: {fix}"
            )

    labels = frame[label_column]
    if (bad := ~pd.to_numeric(labels, errors="coerce").isin([0, 1])).any():
        i = _first(bad)
        kind = "a number other than" if pd.api.types.is_number(labels.iloc[i]) else "a value that is not"
        raise DatasetError(
            f"{where}: column '{label_column}' holds {kind} 0 or 1 in {_place(frame, i)} "
            f"({_rows(bad)} in all); fix: map your classes to 0 and 1"
        )

    if id_column is not None and (repeated := frame[id_column].astype(str).duplicated(keep=False)).any():
        first, second = (_place(frame, i) for i in repeated.to_numpy().nonzero()[0][:2])
        raise DatasetError(
            f"{where}: column '{id_column}' repeats an id ({first} and {second}; {_rows(repeated)} "
            "share an id); fix: make the ids unique, or set dataset.id_column=null to number the rows"
        )


def _blank(values: pd.Series) -> pd.Series:
    return values.isna() | (values.astype(str).str.strip() == "")


def _rows(mask: pd.Series) -> str:
    n = int(mask.sum())
    return f"{n} row" if n == 1 else f"{n} rows"


def _first(mask: pd.Series) -> int:
    return int(mask.to_numpy().nonzero()[0][0])


def _place(frame: pd.DataFrame, i: int) -> str:
    """Where row `i` (0-based) is in the user's file: its line for JSONL, else its row."""
    if frame.attrs.get("format") == "jsonl":
        line = i + 1
        for skipped in frame.attrs["skipped_lines"]:  # ascending
            line += skipped <= line
        return f"line {line}"
    return f"row {i + 1}" + (" below the header" if frame.attrs.get("format") == "csv" else "")
