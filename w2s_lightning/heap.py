"""Python's cycle collector against the heap that torch, Lightning and transformers leave.

Importing them creates a few million objects that live until the process ends. The collector
walks every one of them in each full collection, and a run allocates enough (tokenised texts,
Lightning's loops) to trigger several; at exit the interpreter walks the whole heap once more.
On the embedded default that was about 2 s of a 22 s run (`bench/README.md`, "Recorded figures").

Both act only in a process that `own_process` claimed (`train.py` run as a script), never in
one that imports the package (a test session, a notebook), whose heap is not ours to manage.
`own_process` registers an exit handler that freezes the heap after every other exit handler has
run (W&B's and logging's included): the operating system takes the memory back without the last
walk. `freeze_imports` moves what exists once the libraries are imported into the collector's
permanent generation, which it never walks: modules, classes and functions, garbage only at
exit. It acts once per process, before any stage has built a model or a trainer, so no stage's
objects are frozen (a sweep's jobs in one process free theirs as usual)."""

from __future__ import annotations

import atexit
import gc

_owned = False
_frozen = False


def own_process() -> None:
    """Claim this process for one run or sweep; call before torch is imported, so that the exit
    handler, registered first, runs last (exit handlers run in reverse order of registration)."""
    global _owned
    if not _owned:
        _owned = True
        atexit.register(gc.freeze)


def freeze_imports() -> None:
    """Exempt every object alive now from later full collections: once, in an owned process."""
    global _frozen
    if _owned and not _frozen:
        _frozen = True
        gc.freeze()
