"""The stage cache: each stage's outputs live in `<root>/<stage>/<key>/`, where the key is a
hash of exactly the resolved config that determines them. A stage is written into a
temporary folder and renamed into place when complete, so a killed job never leaves
anything that reads as finished; a file lock makes parallel jobs that need the same stage
train it once while the others wait and read it.

    python -m w2s_lightning.cache list  [ROOT]
    python -m w2s_lightning.cache prune [ROOT] [--stage weak] [--older-than-days 30] [--all]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

log = logging.getLogger(__name__)

# Bump when a change to the code changes what a stage computes, so old entries miss.
CACHE_VERSION = 1
RECORD = "record.json"
DEFAULT_ROOT = Path(".cache/stages")


def stage_key(stage: str, payload: dict) -> str:
    blob = json.dumps({"stage": stage, "version": CACHE_VERSION, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StageResult:
    record: dict
    path: Path
    cached: bool


class StageCache:
    def __init__(self, root: str | Path, enabled: bool = True, force_retrain: bool = False):
        self.root, self.enabled, self.force_retrain = Path(root), enabled, force_retrain

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str) -> StageResult | None:
        path = self.path(stage, key)
        if self.enabled and not self.force_retrain and (path / RECORD).exists():
            return StageResult(json.loads((path / RECORD).read_text()), path, cached=True)
        return None

    def run(self, stage: str, key: str, compute: Callable[[Path], dict]) -> StageResult:
        """Return the finished stage, computing it (into a folder it is handed) only if no
        finished copy exists. `compute` returns the JSON-able record of the stage."""
        if hit := self.lookup(stage, key):
            return hit
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):
            # Another job may have finished it while this one waited for the lock.
            if hit := self.lookup(stage, key):
                return hit
            tmp = final.parent / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                record = compute(tmp)
                record = {**record, "stage": stage, "key": key, "finished_at": time.time()}
                (tmp / RECORD).write_text(json.dumps(record, indent=2))
                if final.exists():  # force_retrain replaces the old entry
                    shutil.rmtree(final)
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return StageResult(record, final, cached=False)


def entries(root: Path) -> list[dict]:
    rows = []
    for record_path in sorted(root.glob(f"*/*/{RECORD}")):
        record = json.loads(record_path.read_text())
        size = sum(f.stat().st_size for f in record_path.parent.rglob("*") if f.is_file())
        rows.append(
            {
                "stage": record_path.parent.parent.name,
                "key": record_path.parent.name,
                "model": record.get("model", ""),
                "finished_at": record.get("finished_at", 0),
                "bytes": size,
                "path": record_path.parent,
            }
        )
    return rows


def stale_temporaries(root: Path) -> list[Path]:
    """Folders left by killed jobs; never read, safe to delete when no job runs."""
    return sorted(p for p in root.glob("*/.*.tmp-*") if p.is_dir())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m w2s_lightning.cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["list", "prune"])
    parser.add_argument("root", nargs="?", default=str(DEFAULT_ROOT), help="cache root (paths.cache_dir)")
    parser.add_argument("--stage", help="only this stage (weak, ceiling, student)")
    parser.add_argument("--older-than-days", type=float, help="prune entries finished longer ago than this")
    parser.add_argument("--all", action="store_true", help="prune every entry (with --stage: every entry of it)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    rows = [r for r in entries(root) if args.stage in (None, r["stage"])]
    if args.command == "list":
        for r in rows:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["finished_at"]))
            print(f"{r['stage']:8} {r['key']}  {when}  {r['bytes'] / 1e6:8.2f} MB  {r['model']}")
        print(f"{len(rows)} entries under {root}; {len(stale_temporaries(root))} unfinished temporaries")
        return
    if args.older_than_days is None and not args.all:
        parser.error("prune needs --older-than-days N or --all")
    cutoff = time.time() - 86400 * (args.older_than_days or 0)
    doomed = [r["path"] for r in rows if args.all or r["finished_at"] < cutoff] + stale_temporaries(root)
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    print(f"pruned {len(doomed)} folders under {root}")


if __name__ == "__main__":
    main()
