"""Which weights a model source names, beyond its spelling, for the keys of what they compute.

A hub id names its weights with its `revision` (a branch such as main may move on; a commit as
`revision` pins them). A folder or file on disk does not: finetuning again into the same folder
keeps its path, and a key holding only the path would serve results computed with the old
weights. Such a source is named by the relative path, size and modification time of every file
in it (hidden ones aside): rewriting a file changes its time, copying the folder elsewhere
changes its path (both only cost a recomputation). Reading sizes and times costs a stat per
file, never reading the weights, so a cached rerun of a 70B model stays fast. Weights that a pip
package ships are named by the package's version.

Torch-free: the fully cached rerun (`replay.py`) keys its record with these too."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path

PKG_PREFIX = "pkg://"
MODEL_TYPE_PREFIX = "model_type:"


def package_of(source: str) -> tuple[str, str]:
    """(module, folder inside it) of a `pkg://module/folder` source."""
    module, _, subdir = source[len(PKG_PREFIX) :].partition("/")
    return module, subdir


def package_version(module: str) -> str | None:
    """The installed version of the distribution that ships `module`; None where it is not installed."""
    for name in (module.replace("_", "-"), module):
        try:
            return f"{name}=={importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            pass
    for name in importlib.metadata.packages_distributions().get(module, []):  # another name: ask them all
        return f"{name}=={importlib.metadata.version(name)}"
    return None


def files_stamp(path: Path) -> str:
    """A digest of the relative path, size and modification time of every file at `path`, hidden
    ones aside (a `.git` folder, a download tool's metadata: never weights, and never walked)."""
    if path.is_file():
        files = {path.name: path}
    else:
        files = {}
        for folder, subfolders, names in os.walk(path, followlinks=True):
            subfolders[:] = [d for d in subfolders if not d.startswith(".")]
            for name in names:
                if not name.startswith("."):
                    file = Path(folder) / name
                    files[file.relative_to(path).as_posix()] = file
    digest = hashlib.sha256()
    for name in sorted(files):
        stat = files[name].stat()  # through a link (a hub snapshot's files are links to its blobs)
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def source_identity(source: str | None) -> str | None:
    """What names `source`'s weights beyond its spelling: a package's version or a stamp of the
    files on disk; None for a hub id, random weights or no source."""
    if not source or source.startswith(MODEL_TYPE_PREFIX):
        return None
    if source.startswith(PKG_PREFIX):
        return package_version(package_of(source)[0])
    try:
        path = Path(source).expanduser()
        if not path.exists():
            return None  # a hub id
        return files_stamp(path)
    except (OSError, ValueError):  # not a path at all
        return None


def weights_identity(spec, cache=None) -> dict[str, str | None]:
    """The identities of a catalogue entry's weight and tokenizer sources. A source inside the
    stage cache (a backbone finetuned by an earlier stage) is named by its entry's key already,
    which survives moving the cache; a stamp would not."""

    def identity(source):
        if cache is not None and str(cache.portable(source)).startswith("cache://"):
            return None
        return source_identity(source)

    return {"pretrained": identity(spec.pretrained), "tokenizer": identity(spec.tokenizer)}


def source_fields(spec, cache=None) -> dict:
    """What a key holds of where an entry's weights come from: `pretrained`, a backbone finetuned
    into the cache named relative to it, and the weights its sources hold."""
    pretrained = cache.portable(spec.pretrained) if cache is not None else spec.pretrained
    return {"pretrained": pretrained, "weights": weights_identity(spec, cache)}
