"""A fully cached rerun answered without torch or Lightning, which take seconds to import.

At the end of every successful run with the cache on, `remember` writes a run record into the
stage cache, `<cache_dir>/run/<key>/`: the run's results.json and weak_labels.parquet, and the
cache entries its numbers were read from, each with the sha256 of its record.json. The key
hashes the resolved config (less the knobs in NOT_IN_KEY), the package's code and model
catalogue, the versions of the libraries that compute or read results, every other file the
config names, and CACHE_VERSION.

`replay` answers a rerun from that record when nothing would run, and only if every listed entry
is intact (every file's sha256, as a cache hit checks) and is still the very entry the numbers
came from, and the data is the data the numbers came from. Where the dataset's loader reads files
that `data/inputs.py` can name from the config (the embedded default, a local file), the record
also keeps their sha256 and the splits the run drew: equal hashes give those splits without
importing pandas. Otherwise it rebuilds the splits (pandas only) and answers only if their
fingerprints and the duplicate guard's counts equal the record's. It then writes what a cached rerun writes:
results.json (stages marked cached), splits.json and weak_labels.parquet. Whenever anything is
missing or different it returns None, logging why at debug level, and the pipeline runs as usual.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from w2s_lightning import console, distributed
from w2s_lightning.cache import RECORD, StageCache, check, sha256, stage_key
from w2s_lightning.config import CONF_DIR, flat_config
from w2s_lightning.data.inputs import files_read
from w2s_lightning.errors import DatasetError
from w2s_lightning.models.identity import source_identity

log = logging.getLogger(__name__)

STAGE = "run"  # the records' folder in the stage cache, beside weak/, ceiling/, student/
SOURCES = "replay.json"  # in a record: the cache entries its results were read from
RESULTS, LABELS, SPLITS = "results.json", "weak_labels.parquet", "splits.json"

# Top-level config keys that do not change what a run computes, left out of the record's key.
# results.json's own copies of them (`name`, `config`) are rebuilt from the running config.
NOT_IN_KEY = {
    "paths": "where outputs and the cache lie; the entries themselves are checked, and cache_path is rebuilt",
    "logger": "how a run is watched; replay answers only when no logger is configured",
    "hydra": "Hydra's own settings (output folders, launcher, sweeper)",
    "verbose": "which third-party lines the terminal shows",
    "name": "the dashboard group and report title",
    "cache": "enabled and force_retrain decide whether replay may answer; lock is how entries are locked",
    "save_weights": "whether a stage keeps its weights; in no stage key, so a cached rerun reuses entries either way",
}
# The config subtree whose files are read as data: their content is checked as the splits'
# fingerprints, so where they lie (these keys, at any depth under it) is left out of the key, as
# the stage keys leave it out: a copy of the same file elsewhere still answers.
DATA_KEY = "dataset"
DATA_LOCATIONS = {"path", "test_path", "local_path"}
# Catalogue fields that name where a model's weights and tokenizer come from.
SOURCE_KEYS = {"pretrained", "tokenizer"}
# Libraries whose version may change a number a cached rerun recomputes (metrics, refined labels).
LIBRARIES = ("numpy", "pandas", "pyarrow", "torch", "lightning", "transformers")


class StepAside(Exception):
    """Replay cannot vouch for this rerun; the message says why (logged at debug level)."""


@dataclass
class Replayed:
    score: float | None  # what the pipeline returns: the student's weak-labelled validation accuracy


def replay(cfg) -> Replayed | None:
    """Write a fully cached rerun's outputs from its run record, or return None when anything
    must run (the pipeline then runs as usual)."""
    try:
        results, splits, record = decide(cfg)
    except StepAside as why:
        log.debug("replay: running the pipeline: %s", why)
        return None
    except Exception:
        # A bug here must not cost a result: the pipeline answers, and the traceback is kept.
        log.debug("replay: running the pipeline after an unexpected error", exc_info=True)
        return None
    write_outputs(cfg, results, splits, record)
    return Replayed(results["student"]["val_weak_acc"])


def decide(cfg) -> tuple[dict, str, Path]:
    """The results to write, splits.json's text and the record's folder; StepAside otherwise. The
    cheap checks come first, so a rerun that must train pays for none of the data loading."""
    gate(cfg)
    record = Path(cfg.paths.cache_dir) / STAGE / record_key(cfg)
    if not record.is_dir():
        raise StepAside(f"no run record {record}")
    intact(record)
    sources = json.loads((record / SOURCES).read_text())
    for entry in sources["entries"]:
        same_entry(Path(cfg.paths.cache_dir), entry)
    results = json.loads((record / RESULTS).read_text())
    splits = recorded_splits(cfg, record, sources) or same_data(cfg, results["data"]).to_json()
    return rebuilt(cfg, results), splits, record


def gate(cfg) -> None:
    """What a cached rerun would do beyond writing its run folder."""
    if not cfg.cache.enabled:
        raise StepAside("cache.enabled=false")
    if cfg.cache.force_retrain:
        raise StepAside("cache.force_retrain=true retrains every stage")
    if any(node is not None for node in (cfg.get("logger") or {}).values()):
        raise StepAside("a configured logger writes a metrics run even when every stage is cached")
    if distributed.world_size() > 1:
        # Every rank of a multi-process launch takes the same path, so none waits for another.
        raise StepAside(f"one of {distributed.world_size()} processes")


def record_key(cfg) -> str:
    """Everything a cached rerun's results.json depends on, except the data and the entries,
    which `decide` checks one by one."""
    view = {k: plain(cfg[k]) for k in cfg if k not in NOT_IN_KEY}
    named = {k: v for k, v in view.items() if k != DATA_KEY}
    files, sources = named_files(named), named_sources(named)
    view[DATA_KEY] = without(view[DATA_KEY], DATA_LOCATIONS)
    payload = {"config": view, "files": files, "code": code_digest(), "libraries": library_versions()}
    return stage_key(STAGE, {**payload, "sources": sources})


def plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def without(node, keys: set[str]):
    """`node` without `keys`, at any depth."""
    if isinstance(node, dict):
        return {k: without(v, keys) for k, v in node.items() if k not in keys}
    return node


def strings(node, key: str | None = None):
    """(key, value) for every non-empty string in a config tree; a list's items take its key."""
    if isinstance(node, dict):
        for k, value in node.items():
            yield from strings(value, k)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value, key)
    elif isinstance(node, str) and node:
        yield key, node


def named_files(node) -> dict[str, str]:
    """sha256 of every existing file a config value names (a weak-labels file, say): the run read
    it, and an edited copy at the same path must miss."""
    found = {}
    for _, value in strings(node):
        try:
            path = Path(value).expanduser()
            if path.is_file():
                found[value] = sha256(path)
        except (OSError, ValueError):  # not a path at all
            pass
    return found


def named_sources(node) -> dict[str, str | None]:
    """The identity of every model source the config names (a strong model's weights finetuned
    again into the same folder must miss; models/identity.py)."""
    return {value: source_identity(value) for key, value in strings(node) if key in SOURCE_KEYS}


@functools.cache
def code_digest() -> str:
    """The package's code and model catalogue (methods read catalogue entries by name), hashed
    once per process: call it when a run starts, so a record names the code that ran."""
    package = Path(__file__).resolve().parent
    files = sorted(package.rglob("*.py")) + sorted((CONF_DIR / "model").glob("*.yaml"))
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(package.parent)}\0".encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


@functools.cache
def library_versions() -> dict[str, str | None]:
    """Read from the installed metadata, without importing the libraries."""
    versions = {"python": sys.version}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def intact(path: Path) -> dict:
    record, problem = check(path)  # every file's size and sha256, as a cache hit checks
    if problem:
        raise StepAside(f"{path}: {problem}")
    return record


def same_entry(root: Path, entry: dict) -> None:
    """A stage entry the results came from: intact, and not retrained since (force_retrain
    rewrites record.json, whose hash the run record holds)."""
    path = root / entry["stage"] / entry["key"]
    intact(path)
    if sha256(path / RECORD) != entry["record_sha256"]:
        raise StepAside(f"{path} was replaced after the run record was written")


def data_digests(cfg) -> list[str] | None:
    """sha256 of each file the dataset's loader reads, in its order (not their paths: a copy
    elsewhere holds the same data); None for a loader whose files the config does not name, or
    when one is missing (the loader then says so in its own words)."""
    try:
        files = files_read(plain(cfg[DATA_KEY].loader))
        return None if files is None else [sha256(path) for path in files]
    except (OSError, DatasetError):
        return None


def recorded_splits(cfg, record: Path, sources: dict) -> str | None:
    """The record's splits.json, when the files its run read hash as they did then; None when
    the record kept no hashes or a file changed (the splits are then rebuilt and compared)."""
    recorded = sources.get("data_files")
    if recorded is None:
        return None
    if data_digests(cfg) != recorded:
        log.debug("replay: the dataset's files changed since the run record was written")
        return None
    return (record / SPLITS).read_text()


def same_data(cfg, recorded: dict):
    """The splits, rebuilt as the pipeline builds them (pandas only, no torch): replay answers only
    for the data the results came from."""
    from hydra.utils import instantiate

    from w2s_lightning.data.splits import SPLIT_NAMES, make_splits

    # `_partial_`, as the pipeline calls the loader, so the same errors reach the same place.
    splits = make_splits(instantiate(cfg.dataset.loader, _partial_=True)(), cfg.dataset, cfg.seed)
    if splits.fingerprints(*SPLIT_NAMES) != recorded["fingerprints"]:
        raise StepAside("the data differs from the data of the run record")
    if json.loads(json.dumps(splits.guard)) != recorded["guard"]:
        raise StepAside("the duplicate guard dropped other examples than in the run record")
    return splits


def rebuilt(cfg, results: dict) -> dict:
    """The recorded results as a cached rerun of this config reports them: every stage read from
    the cache at its path under this run's cache_dir, and this config's identity."""
    results = {**results, "name": cfg.name, "config": flat_config(cfg)}
    root = Path(cfg.paths.cache_dir)
    for section in results.values():
        if not isinstance(section, dict):
            continue
        if section.get("cached") is not None:  # None: labels from a file, read from no stage
            section["cached"] = True
        if section.get("cache_path"):
            section["cache_path"] = str(root / section["cache_path"])
    return results


def write_outputs(cfg, results: dict, splits: str, record: Path) -> None:
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SPLITS).write_text(splits)
    shutil.copyfile(record / LABELS, out_dir / LABELS)
    tmp = out_dir / f"{RESULTS}.tmp"
    tmp.write_text(json.dumps(results, indent=2, allow_nan=False))
    shutil.move(tmp, out_dir / RESULTS)
    log.info("every stage of this run is in the cache (run record %s): nothing to run", record.name)
    log.info("%s", console.scores(results))


def keeps_record(cfg) -> bool:
    """Whether a successful run leaves a run record: not with the cache off (its stages live in
    the run folder, where no rerun finds them), nor on a rank that writes nothing."""
    return bool(cfg.cache.enabled) and distributed.is_leader()


def remember(cfg, out_dir: Path, stages: list, data_files: list[str] | None = None) -> None:
    """After a successful run: the run record a rerun of the same config answers from. `stages`
    are the StageResults the results were read from; `data_files` the `data_digests` taken
    before the data was read (None: a rerun rebuilds the splits); results.json, splits.json and
    weak_labels.parquet are taken as the run just wrote them."""
    if not keeps_record(cfg):
        return
    root = Path(cfg.paths.cache_dir)
    try:
        results = json.loads((out_dir / RESULTS).read_text())
        for section in results.values():
            if isinstance(section, dict) and section.get("cache_path"):
                section["cache_path"] = Path(section["cache_path"]).relative_to(root).as_posix()
        entries = {s.path: s for s in stages}.values()
        sources = {
            "entries": [
                {"stage": s.record["stage"], "key": s.record["key"], "record_sha256": sha256(s.path / RECORD)}
                for s in entries
            ],
            "data_files": data_files,
        }
    except (OSError, ValueError) as err:  # an entry outside the cache, or gone already
        log.warning("no run record for this run (%s): a rerun runs the pipeline", err)
        return

    def write(workdir: Path) -> dict:
        (workdir / SOURCES).write_text(json.dumps(sources, indent=2))
        (workdir / RESULTS).write_text(json.dumps(results, indent=2, allow_nan=False))
        shutil.copyfile(out_dir / LABELS, workdir / LABELS)
        shutil.copyfile(out_dir / SPLITS, workdir / SPLITS)
        return {"model": f"{results['weak_model']} -> {results['strong_model']}"}

    try:
        # force_retrain: a run that reached this point replaces any older record of its key.
        StageCache(root, force_retrain=True, lock=cfg.cache.lock, alone=True).run(STAGE, record_key(cfg), write)
    except OSError as err:
        log.warning("could not write the run record (%s): a rerun runs the pipeline", err)
