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
objects are frozen (a sweep's jobs in one process free theirs as usual).

`own_process` also tells glibc's allocator to keep the memory torch frees (`keep_freed_memory`).
By default glibc gives each block over a threshold (128 KiB at first, rising with use to 32 MiB)
its own fresh pages from the kernel and hands them back when it is freed, and returns free
memory at the top of a heap beyond a trim threshold: the next batch's tensors of the same shapes
fault every page in again, zeroed by the kernel. On the embedded default that was 1.3–1.5 million
page faults and 3.5 s of system time; with the thresholds set it is 0.9–1.0 million and 2.7 s, and
the run about 1 s faster (README.md, "Speed goals"). Freed memory stays with the process until it
ends, so its resident size falls less between stages; its peak is the same."""

from __future__ import annotations

import atexit
import ctypes
import gc
import os

_owned = False
_frozen = False

# mallopt's parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit: blocks up to here are reused
TRIM_THRESHOLD = 1 << 30  # free memory a heap keeps at its top rather than return to the kernel
# Where a user set the allocator's thresholds themselves, theirs stand.
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def own_process() -> None:
    """Claim this process for one run or sweep; call before torch is imported, so that the exit
    handler, registered first, runs last (exit handlers run in reverse order of registration)."""
    global _owned
    if not _owned:
        _owned = True
        atexit.register(gc.freeze)
        keep_freed_memory()


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds so that freed tensors are reused, not returned to the
    kernel. False (nothing set) off glibc (macOS, musl) or where the environment sets them."""
    if any(name in os.environ for name in MALLOC_ENV) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  # glibc's own symbol: its mallopt takes these parameters
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def freeze_imports() -> None:
    """Exempt every object alive now from later full collections: once, in an owned process."""
    global _frozen
    if _owned and not _frozen:
        _frozen = True
        gc.freeze()
