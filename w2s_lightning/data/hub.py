"""Hugging Face hub datasets as binary text classification.

`load_hub` reads one train and (optionally) one test split with `datasets`, turns every row into
examples with a registered formatter (`formatters.py`) and returns every example: shuffling,
balancing and subsampling are the pipeline's job. Offline clusters point `dataset.local_path`
at a copy made on a machine with network: a `save_to_disk` folder, or a folder of
`<split>.jsonl` / `<split>.parquet` files in the hub schema."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from w2s_lightning.data.formatters import Formatter, get_formatter
from w2s_lightning.data.sources import Frames
from w2s_lightning.errors import DatasetError

log = logging.getLogger(__name__)

# Where the hub keeps a parquet copy of datasets that still ship a loading script, which
# current `datasets` refuses to run: one folder per config, one subfolder per split.
PARQUET_EXPORT = "refs/convert/parquet"
SCRIPT_REFUSED = "scripts are no longer supported"


def load_hub(
    name: str,
    hub_id: str,
    formatter: str,
    subset: str | None = None,
    train_split: str = "train",
    test_split: str | None = "test",
    local_path: str | None = None,
    seed: int = 0,
) -> Frames:
    """`seed` orders the candidates of pairwise formats; it is fixed per dataset so that ids and
    texts are the same in every run."""
    fmt = get_formatter(formatter)
    if train_split == test_split:
        raise DatasetError(
            f"dataset '{name}': train and test both read split '{train_split}'; fix: set "
            "dataset.loader.test_split to another split, or null to hold out part of train"
        )
    splits = {key: split for key, split in (("train", train_split), ("test", test_split)) if split is not None}
    frames = {}
    for key, split in splits.items():
        if local_path:
            rows = local_rows(name, local_path, split)
        else:
            rows = hub_rows(name, hub_id, subset, split, list(splits.values()))
        frames[key] = to_frame(name, split, rows, fmt, seed)
    return frames


def to_frame(name: str, split: str, rows: Iterator[dict], fmt: Formatter, seed: int) -> pd.DataFrame:
    """One example per row and option; every example of a row shares the row's item id
    (`group`), so splits keep a question's options together."""
    columns = {"id": [], "text": [], "label": [], "group": [], "cut_start": [], "cut_end": [], "cut_from": []}
    n_rows = unused = 0
    for index, row in enumerate(rows):
        n_rows += 1
        # Seeded per row, not per pass, so a row's example does not depend on the rows before it.
        rng = random.Random(f"{seed}-{split}-{index}") if fmt.random_order else None
        try:
            examples = fmt.render(row, rng)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
            # The field's name, never the row's text: messages must not leak data into logs.
            detail = f"no field {error}" if isinstance(error, KeyError) else type(error).__name__
            raise DatasetError(
                f"dataset '{name}': row {index} of split '{split}' does not fit formatter '{fmt.name}' "
                f"({detail}); fix: point dataset.hub_id or dataset.local_path at data in the hub "
                f"schema (fields {list(fmt.content)}), or set dataset.loader.formatter to the one for this schema"
            ) from error
        unused += not examples
        for k, example in enumerate(examples):
            columns["id"].append(f"{name}-{split}-{index}-{k}")
            columns["group"].append(f"{name}-{split}-{fmt.item_of(row, index)}")
            for column in ("text", "label", "cut_start", "cut_end"):
                columns[column].append(getattr(example, column))
            columns["cut_from"].append(fmt.cut_from)
    if not columns["id"]:
        raise DatasetError(
            f"dataset '{name}': split '{split}' gave no labelled examples from {n_rows} rows (hidden "
            "test labels?); fix: set dataset.loader.test_split to a labelled split such as validation"
        )
    if unused:
        log.info(
            "dataset %s: %d of %d rows of split %s gave no example (unlabelled or malformed)",
            name,
            unused,
            n_rows,
            split,
        )
    log.info("dataset %s: split %s -> %d examples from %d rows", name, split, len(columns["id"]), n_rows)
    frame = pd.DataFrame(columns)
    frame.attrs["source"] = f"split '{split}' of {name}"
    return frame


# ---------------------------------------------------------------- the hub


def hub_rows(name: str, hub_id: str, subset: str | None, split: str, splits: list[str]) -> Iterator[dict]:
    try:
        dataset = from_hub(hub_id, subset, split)
    except DatasetError:
        raise
    except Exception as error:  # offline, unknown id, gated, bad split: every cause gets the same advice
        raise DatasetError(unreachable_message(name, hub_id, subset, split, splits, error)) from error
    return dataset_rows(dataset)


def from_hub(hub_id: str, subset: str | None, split: str):
    import datasets  # here, not at the top: it takes seconds to import and local copies rarely need it

    try:
        return datasets.load_dataset(hub_id, subset, split=split)
    except RuntimeError as error:
        if SCRIPT_REFUSED not in str(error):
            raise
    config = subset or export_config(hub_id)
    log.info("%s ships a loading script; reading its parquet export (%s)", hub_id, PARQUET_EXPORT)
    files = {split: f"{config}/{split}/*.parquet"}
    return datasets.load_dataset(hub_id, revision=PARQUET_EXPORT, data_files=files, split=split)


def export_config(hub_id: str) -> str:
    from huggingface_hub import HfApi, RepoFolder

    tree = HfApi().list_repo_tree(hub_id, repo_type="dataset", revision=PARQUET_EXPORT)
    folders = [entry.path for entry in tree if isinstance(entry, RepoFolder)]
    if len(folders) != 1:
        raise DatasetError(
            f"hub dataset '{hub_id}' has configs {folders} in its parquet export; fix: set "
            "dataset.loader.subset to one of them"
        )
    return folders[0]


def unreachable_message(
    name: str, hub_id: str, subset: str | None, split: str, splits: list[str], error: Exception
) -> str:
    # Single quotes only: hydra shows the error through repr(), which would escape them otherwise.
    args = f"'{hub_id}'" + (f", '{subset}'" if subset else "")
    target = f"/data/{name}"
    return (
        f"dataset '{name}': could not load split '{split}' of hub dataset {args} ({type(error).__name__}: "
        f"{error}). If this node cannot reach the hub, copy the dataset on a machine with network, in Python: "
        f"datasets.load_dataset({args}).save_to_disk('{target}') (or, which also handles datasets that still "
        f"ship a loading script: w2s_lightning.data.hub.save_copy('{hub_id}', {subset!r}, {splits!r}, "
        f"'{target}')); move the folder here and run with dataset.local_path={target}. Otherwise check "
        "dataset.hub_id and dataset.loader's subset, train_split and test_split."
    )


def save_copy(hub_id: str, subset: str | None, splits: list[str], path: str) -> None:
    """Write hub splits as `<split>.parquet` under `path`, for `dataset.local_path` on a node
    without network; reads the hub the way `load_hub` does, parquet export included."""
    root = Path(path).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    for split in splits:
        from_hub(hub_id, subset, split).to_parquet(str(root / f"{split}.parquet"))


def dataset_rows(dataset, batch_size: int = 4096) -> Iterator[dict]:
    # Batches are far faster than row-by-row access on multi-million-row datasets.
    for batch in dataset.iter(batch_size=batch_size):
        columns = list(batch)
        for values in zip(*batch.values(), strict=True):
            yield dict(zip(columns, values, strict=True))


# ---------------------------------------------------------------- local copies


def local_rows(name: str, local_path: str, split: str) -> Iterator[dict]:
    root = Path(local_path).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"dataset '{name}': local copy {root} is not a folder; fix: set dataset.local_path to the "
            "folder written by save_to_disk, or to a folder of <split>.jsonl / <split>.parquet files"
        )
    if (root / "dataset_dict.json").exists():
        return saved_split(name, root, split)
    if (root / "state.json").exists():
        raise DatasetError(
            f"dataset '{name}': {root} holds a single saved split; fix: save the whole DatasetDict, "
            "i.e. datasets.load_dataset(...).save_to_disk(...) without split=..."
        )
    for suffix, reader in ((".jsonl", jsonl_rows), (".parquet", parquet_rows)):
        path = root / f"{split}{suffix}"
        if path.exists():
            return reader(name, path)
    raise DatasetError(
        f"dataset '{name}': local copy {root} has no split '{split}' (looked for {split}.jsonl, "
        f"{split}.parquet and a save_to_disk folder); fix: add that file, or set dataset.loader's "
        "train_split / test_split to the splits the copy has"
    )


def saved_split(name: str, root: Path, split: str) -> Iterator[dict]:
    import datasets

    saved = datasets.load_from_disk(str(root))
    if split not in saved:
        raise DatasetError(
            f"dataset '{name}': the copy at {root} has splits {list(saved)}, not '{split}'; fix: set "
            "dataset.loader's train_split / test_split to one of them"
        )
    return dataset_rows(saved[split])


def jsonl_rows(name: str, path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(
                    f"dataset '{name}': {path} line {number} is not JSON ({error.msg}); fix: write one "
                    "JSON object per line"
                ) from error


def parquet_rows(name: str, path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches():
        yield from batch.to_pylist()
