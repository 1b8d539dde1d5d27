"""The stage cache: each stage's outputs live in `<root>/<stage>/<key>/`, where the key is a
hash of exactly the resolved config that determines them. A stage is written into a
temporary folder and renamed into place when complete, so a killed job never leaves
anything that reads as finished; a file lock makes parallel jobs that need the same stage
train it once while the others wait and read it (a POSIX lock, or with `lock="file"` a lock file
with a heartbeat for filesystems where POSIX locks do not reach other hosts). Each entry's
record.json lists the size and sha256 of its files; an entry that no longer matches is set aside
as `.corrupt-<key>-<time>` and recomputed, never read.

    python -m w2s_lightning.cache list  [ROOT] [--stage weak] [--verify] [--lock file]
    python -m w2s_lightning.cache prune [ROOT] [--stage weak] [--older-than-days 30] [--all] [--lock file]
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from w2s_lightning import distributed
from w2s_lightning.locks import HOST, LOCKS, STALE_AFTER, FileLease, make_lock, pid_alive, read_lease, why_stale

log = logging.getLogger(__name__)

# Bump when a change to the code changes what a stage computes, so old entries miss.
CACHE_VERSION = 1
RECORD = "record.json"


def default_root() -> Path:
    """Where the pipeline puts the cache by default (conf/paths/default.yaml)."""
    return Path(os.environ.get("W2S_ROOT") or ".") / ".cache" / "stages"


def stage_key(stage: str, payload: dict) -> str:
    blob = json.dumps({"stage": stage, "version": CACHE_VERSION, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksums(folder: Path) -> dict:
    return {
        f.relative_to(folder).as_posix(): {"bytes": f.stat().st_size, "sha256": sha256(f)}
        for f in sorted(folder.rglob("*"))
        if f.is_file() and f.name != RECORD
    }


def check(path: Path, full: bool = True) -> tuple[dict, str | None]:
    """An entry's record and what is wrong with it (None when intact). Without `full`, sizes
    are compared but files are not hashed."""
    try:
        record = json.loads((path / RECORD).read_text())
    except FileNotFoundError:
        return {}, f"{RECORD} is missing"
    except (OSError, ValueError) as err:
        return {}, f"{RECORD} is unreadable ({err})"
    if not isinstance(record, dict):
        return {}, f"{RECORD} is not a JSON object"
    files = record.get("files")
    if not isinstance(files, dict) or not all(isinstance(want, dict) for want in files.values()):
        return record, f"{RECORD} has no file checksums (written before they were recorded, or edited)"
    for name, want in sorted(files.items()):
        file = path / name
        if not file.is_file():
            return record, f"{name} is missing"
        if (size := file.stat().st_size) != want.get("bytes"):
            return record, f"{name} has {size} bytes, {want.get('bytes')} were recorded"
        if full and sha256(file) != want.get("sha256"):
            return record, f"{name} does not match its recorded sha256 (edited or damaged)"
    return record, None


def lock_of(folder: Path, mode: str = "posix") -> Path:
    """The lock file guarding an entry `<key>` or a temporary `.<key>.tmp-...` of it:
    `<key>.lock` for POSIX locks, `<key>.lease` for file locks."""
    key = folder.name[1:].split(".tmp-")[0] if folder.name.startswith(".") else folder.name
    return folder.parent / f"{key}.{'lease' if mode == 'file' else 'lock'}"


@dataclass
class StageResult:
    record: dict
    path: Path
    cached: bool


class StageCache:
    def __init__(
        self,
        root: str | Path,
        enabled: bool = True,
        force_retrain: bool = False,
        lock: str = "posix",
        stale_after: float = STALE_AFTER,
        lock_timeout: float = -1,
        alone: bool = False,
    ):
        """`alone`: a cache only this process uses while the others go on (rank 0's bookkeeping after
        a run), so `run` makes no agreement with other ranks."""
        if lock not in LOCKS:
            raise ValueError(f"cache.lock must be one of {LOCKS}, not {lock!r}")
        self.root, self.enabled, self.force_retrain = Path(root), enabled, force_retrain
        self.lock_mode, self.stale_after, self.lock_timeout = lock, stale_after, lock_timeout
        self.agree = (lambda decision: decision) if alone else distributed.agree
        self.pending: dict[tuple[str, str], Future] = {}  # entries handed to another thread (`start`)

    def portable(self, value):
        """A path inside the cache (a finetuned backbone) as `cache://<relative path>`, so keys that
        name it survive moving or copying the cache; any other value as it is."""
        if not isinstance(value, str):
            return value
        try:
            return "cache://" + str(Path(value).resolve().relative_to(self.root.resolve()))
        except ValueError:
            return value

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lock(self, stage: str, key: str) -> FileLock | FileLease:
        return make_lock(lock_of(self.path(stage, key), self.lock_mode), self.lock_timeout, self.stale_after)

    def lookup(self, stage: str, key: str) -> StageResult | None:
        """The finished entry if it is intact; a damaged one is set aside and reads as a miss."""
        path = self.path(stage, key)
        if not self.enabled or self.force_retrain or not path.exists():
            return None
        record, problem = check(path)
        if problem is None:
            return StageResult(record, path, cached=True)
        # Judge it again under the lock: a force_retrain job may be swapping this entry right now.
        with self.lock(stage, key):
            return self._intact(stage, key)

    def _intact(self, stage: str, key: str) -> StageResult | None:
        """Under the entry's lock: the entry if intact, else None after setting it aside."""
        path = self.path(stage, key)
        if not path.exists():
            return None
        record, problem = check(path)
        if problem is None:
            return StageResult(record, path, cached=True)
        aside = path.parent / f".corrupt-{key}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        os.replace(path, aside)
        log.warning(
            "stage cache: %s entry %s is damaged: %s; moved it to %s, it will be recomputed", stage, key, problem, aside
        )
        return None

    def start(self, stage: str, key: str, compute: Callable[[Path], dict], executor: Executor) -> None:
        """Begin `run(stage, key, compute)` on `executor`'s thread; a later `run` of the same entry in
        this process takes its result from there, waiting for it if need be, instead of computing
        it again. For work that needs nothing the caller is doing meanwhile (prefetch.py)."""
        if (stage, key) not in self.pending:
            self.pending[stage, key] = executor.submit(self._run, stage, key, compute)

    def run(self, stage: str, key: str, compute: Callable[[Path], dict]) -> StageResult:
        """Return the finished stage, computing it (into a folder it is handed) only if no
        intact finished copy exists. `compute` returns the JSON-able record of the stage.
        Under data parallelism rank 0 decides and writes; the other ranks follow (`_follow`).
        An entry begun by `start` is the result of that computation (or its error)."""
        if (pending := self.pending.pop((stage, key), None)) is not None:
            return pending.result()
        return self._run(stage, key, compute)

    def _run(self, stage: str, key: str, compute: Callable[[Path], dict]) -> StageResult:
        if not distributed.is_leader():
            return self._follow(stage, key, compute)
        if hit := self.lookup(stage, key):
            return self.agree(hit)
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        # prune treats a temporary as abandoned only when this lock is free, so the temporary
        # must exist only while the lock is held.
        with self.lock(stage, key):
            # Another job may have finished it while this one waited for the lock.
            if self.enabled and not self.force_retrain and (hit := self._intact(stage, key)):
                return self.agree(hit)
            self.agree(None)
            tmp = final.parent / f".{key}.tmp-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                record = finish(tmp, stage, key, compute)
                if final.exists():  # force_retrain replaces the old entry
                    shutil.rmtree(final)
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return StageResult(record, final, cached=False)

    def _follow(self, stage: str, key: str, compute: Callable[[Path], dict]) -> StageResult:
        """A rank other than 0 takes no lock (rank 0 may hold it while they train together) and
        writes nothing to the cache: it reads the entry rank 0 found, or computes alongside rank 0
        into a private folder outside the cache, deleted when the process ends. Rank 0's choice
        arrives through the process group; before one exists (a rank just started by the launcher)
        the cache on disk decides, which is what rank 0 decided before it started the ranks."""
        decided = distributed.agree(None)
        if decided is not None:
            return StageResult(decided.record, decided.path, cached=True)
        if self.enabled and not self.force_retrain:
            record, problem = check(self.path(stage, key))
            if problem is None:
                return StageResult(record, self.path(stage, key), cached=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"w2s-rank{distributed.rank()}-{stage}-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        return StageResult(finish(tmp, stage, key, compute), tmp, cached=False)


def finish(folder: Path, stage: str, key: str, compute: Callable[[Path], dict]) -> dict:
    """Run `compute` into `folder` and write the entry's record, checksums included."""
    record = compute(folder)
    record = {**record, "stage": stage, "key": key, "finished_at": time.time()}
    record["files"] = checksums(folder)
    (folder / RECORD).write_text(json.dumps(record, indent=2))
    return record


def entries(root: Path, full: bool = False) -> list[dict]:
    """Every entry with its problem (None when intact); `full` also hashes every file."""
    rows = []
    for path in sorted(p for p in root.glob("*/*") if p.is_dir() and not p.name.startswith(".")):
        record, problem = check(path, full)
        rows.append(
            {
                "stage": path.parent.name,
                "key": path.name,
                "model": record.get("model", ""),
                "finished_at": record.get("finished_at", 0),
                "bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
                "path": path,
                "problem": problem,
            }
        )
    return rows


def temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/.*.tmp-*") if p.is_dir())


def owner_alive(tmp: Path) -> bool:
    """Whether a temporary's name names a live process of this host; a name from another host,
    or from before names carried one, proves nothing."""
    parts = tmp.name.split(".tmp-", 1)[-1].rsplit("-", 2)  # host, pid, random
    if len(parts) < 3 or parts[0] != HOST or not parts[1].isdigit() or int(parts[1]) <= 0:
        return False
    return pid_alive(int(parts[1]))


def held(lock: Path) -> bool:
    """Whether some process holds this lock now: for a file lock, a fresh heartbeat. A holder
    keeps its lock file in place, so a missing file is free (and probing it would create one)."""
    if lock.suffix == ".lease":
        return (lease := read_lease(lock)) is not None and why_stale(lease) is None
    if not lock.exists():
        return False
    try:
        with FileLock(str(lock), timeout=0):
            return False
    except Timeout:
        return True


def stale_temporaries(root: Path, mode: str = "posix") -> list[Path]:
    """Folders left by killed jobs: a running job holds its key's lock for as long as its
    temporary exists, so a temporary whose lock is free is abandoned."""
    return [tmp for tmp in temporaries(root) if not held(lock_of(tmp, mode)) and not owner_alive(tmp)]


def remove_if_free(lock: Path, folders: list[Path]) -> bool:
    """Delete `folders` and the lock file while holding the lock; False, deleting nothing,
    when a running job holds it. filelock makes a waiter that opened the removed file retry; a
    file lock's waiters see it free."""
    try:
        with make_lock(lock, timeout=0):
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)
            lock.unlink(missing_ok=True)
    except Timeout:
        return False
    return True


def prune(root: Path, rows: list[dict], stage: str | None, mode: str = "posix") -> str:
    """Delete the entries in `rows`, the abandoned temporaries, the set-aside corrupt entries and
    every lock file nobody holds; nothing whose lock a running job holds is touched. `mode` is the
    jobs' cache.lock: one cache must be used with one lock mode."""
    stages = [root / stage] if stage else [p for p in root.iterdir() if p.is_dir()]
    suffix = "lease" if mode == "file" else "lock"
    doomed: dict[Path, list[Path]] = {lock: [] for s in stages for lock in s.glob(f"*.{suffix}")}
    temps = [t for t in temporaries(root) if t.parent in stages and not owner_alive(t)]
    for folder in [r["path"] for r in rows] + temps:
        doomed.setdefault(lock_of(folder, mode), []).append(folder)
    kept = [lock for lock, folders in doomed.items() if not remove_if_free(lock, folders)]
    removed = sum(len(folders) for lock, folders in doomed.items() if lock not in kept)
    for aside in (a for s in stages for a in s.glob(".corrupt-*")):
        shutil.rmtree(aside, ignore_errors=True)
        removed += 1
    return f"pruned {removed} folders and the unused lock files under {root}; left {len(kept)} keys in use alone"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m w2s_lightning.cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["list", "prune"])
    parser.add_argument("root", nargs="?", help="cache root (paths.cache_dir); default $W2S_ROOT/.cache/stages")
    parser.add_argument("--stage", help="only this stage (weak, ceiling, student, features)")
    parser.add_argument("--older-than-days", type=float, help="prune entries finished longer ago than this")
    parser.add_argument("--all", action="store_true", help="prune every entry (with --stage: every entry of it)")
    parser.add_argument("--verify", action="store_true", help="list: also check every file's sha256 (reads it all)")
    parser.add_argument("--lock", choices=LOCKS, default="posix", help="the jobs' cache.lock (file: no POSIX locks)")
    args = parser.parse_args(argv)
    root = Path(args.root) if args.root else default_root()
    if not root.is_dir():
        parser.exit(1, f"no stage cache at {root}: pass ROOT or set W2S_ROOT\n")
    rows = [r for r in entries(root, args.verify) if args.stage in (None, r["stage"])]
    if args.command == "list":
        for r in rows:
            if r["problem"]:
                print(f"{r['stage']:8} {r['key']}  CORRUPT: {r['problem']}")
                continue
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["finished_at"]))
            print(f"{r['stage']:8} {r['key']}  {when}  {r['bytes'] / 1e6:8.2f} MB  {r['model']}")
        temps = [t for t in temporaries(root) if args.stage in (None, t.parent.name)]
        running = len(set(temps) - set(stale_temporaries(root, args.lock)))
        corrupt = sum(bool(r["problem"]) for r in rows)
        aside = len([a for a in root.glob("*/.corrupt-*") if args.stage in (None, a.parent.name)])
        print(
            f"{len(rows)} entries under {root} ({corrupt} corrupt, {aside} set aside); "
            f"{len(temps)} unfinished temporaries ({running} of running jobs)"
        )
        return
    if args.older_than_days is None and not args.all:
        parser.error("prune needs --older-than-days N or --all")
    cutoff = time.time() - 86400 * (args.older_than_days or 0)
    print(
        prune(root, [r for r in rows if args.all or r["problem"] or r["finished_at"] < cutoff], args.stage, args.lock)
    )


if __name__ == "__main__":
    main()
