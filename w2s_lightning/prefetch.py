"""The strong probe's frozen features, computed on the cores the weak stage leaves idle.

On a CPU the weak supervisor of the embedded default trains on one thread (threads.py: a small
model's steps do not split well), while the strong model's features, most of the ceiling's
time, wait their turn although nothing in them depends on the weak stage. With
`prefetch_features`, a background thread computes them meanwhile, each under the cache key that
the stages reading them look up (`stages.Inputs.features`), and a stage takes each one from
there, waiting for it if it is not finished yet (`StageCache.start`).

The thread computes every split the strong model reads except the one the ceiling trains on,
which is needed the moment the weak stage ends; that one the ceiling computes itself.

Nothing a stage computes changes. The thread extracts on the number of torch threads the stage
would (`threads`), so each feature comes out of the same kernels bit for bit, also for models
whose reductions round differently on fewer threads (SmolLM2's do); while the weak stage runs,
the two share the cores. A frozen encoder with loaded weights draws nothing from the random
generators when it is built, and feature extraction draws from a generator of its own, so the
weak stage's draws are the ones it makes alone (tests/test_prefetch.py compares whole runs with
and without). An encoder with random weights is drawn from the seeded generator, so its
features are left to the stage. Never under data parallelism, whose collectives the thread's
would interleave with. A run that fails or is interrupted stops the thread at its next batch
(`Abandon`), leaving nothing half-made in the cache."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import lightning as L
import torch

from w2s_lightning import distributed
from w2s_lightning.methods.features import frozen_inputs
from w2s_lightning.models.backbone import random_weights
from w2s_lightning.progress import EpochLines
from w2s_lightning.threads import AUTO, SMALL, process_cores, work_of

log = logging.getLogger(__name__)

STAGE = "strong"  # how its passes are named on the console


class Abandoned(RuntimeError):
    """A background pass stopped because the run it served had failed or been interrupted."""


class Abandon(L.Callback):
    """Stops a background pass at its next batch once `event` is set: a run that failed or was
    interrupted (Ctrl-C, a scheduler's SIGTERM) exits without waiting for work nobody will read."""

    def __init__(self, event: threading.Event):
        self.event = event

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.event.is_set():
            raise Abandoned("the run this background pass served has stopped")


def prefetch_threads(cfg, spec) -> int:
    """The torch threads the background starts with for strong model `spec` (this thread's count,
    from which `use_threads` makes the stage's choice); 0 for no background work. `auto`: on a CPU,
    with `threads: auto`, a small weak model (it trains on one thread) and a core to spare. `true`
    forces it wherever it is safe."""
    setting = cfg.get("prefetch_features", AUTO)  # checks.py vetted it
    if setting is False or not spec.linear_probe or random_weights(spec) or distributed.world_size() > 1:
        return 0
    if setting == AUTO and (
        cfg.trainer.accelerator != "cpu"
        or cfg.get("threads", AUTO) != AUTO
        or work_of(cfg.weak_model) != SMALL
        or process_cores() < 2
    ):
        return 0
    return torch.get_num_threads()


def splits_ahead(cfg) -> list[str]:
    """The strong model's splits in the order the background computes them: least urgent first,
    without the ceiling's training split."""
    needed = list(dict.fromkeys([cfg.ceiling_split, "val", "test", "b"]))  # in the order the stages read them
    return needed[:0:-1]


@contextmanager
def prefetch_features(exp, start):
    """Within the block, the strong model (where `start` points) has its features of
    `splits_ahead` computed on a background thread; the block waits for that thread at its end."""
    threads = prefetch_threads(exp.cfg, start.spec)
    if not threads:
        yield
        return
    stop = threading.Event()
    # Lines, never a live bar: the weak stage may be drawing its own.
    lines = [EpochLines(STAGE)] if exp.cfg.trainer.get("enable_progress_bar", True) else []
    inputs = frozen_inputs(exp, start.spec, STAGE, [*lines, Abandon(stop)])
    # torch's thread count is per thread; a new one starts from the process's default, not ours.
    executor = ThreadPoolExecutor(1, "w2s-features", initializer=torch.set_num_threads, initargs=(threads,))
    log.debug("features of %s on %d background threads", start.spec.name, threads)
    try:
        for split in splits_ahead(exp.cfg):
            frame = exp.unlabelled(split)
            job = inputs.feature_job(inputs.encode(frame, split))
            exp.cache.start("features", inputs.feature_key(frame), job, executor)
        executor.submit(inputs.release)  # the encoder's memory goes once its last split is done
        yield
    except BaseException:
        stop.set()  # the run failed or was interrupted: the pass under way ends at its next batch
        raise
    finally:
        # Normally every entry was taken by now. After an error, what has not begun is dropped and
        # the pass under way leaves nothing in the cache (nor its lock held) once it has stopped.
        for key in [k for k in exp.cache.pending if k[0] == "features"]:
            exp.cache.pending.pop(key).cancel()
        executor.shutdown(wait=True)
