"""What `train.py` does with the composed config: run it, and turn an error the user can act on
(`W2SError`) into one line on stderr and an exit status instead of a traceback. Any other
exception is a bug and keeps its traceback."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from w2s_lightning import heap
from w2s_lightning.errors import W2SError

log = logging.getLogger(__name__)


def user_error(err: BaseException | None) -> W2SError | None:
    """The `W2SError` behind `err`, also when `hydra.utils.instantiate` or a library wrapped it."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, W2SError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def report_errors(fn: Callable[..., Any], *args: Any, multirun: bool | None = None, **kwargs: Any) -> Any:
    """Call `fn`; on a user error print `error: <message>` and exit with its status, or, in a
    multirun, return None so the sweep goes on (the job's results.json says it failed; any other
    error is logged with its traceback there)."""
    if multirun is None:
        multirun = in_multirun()
    try:
        return fn(*args, **kwargs)
    except Exception as err:
        found = user_error(err)
        if found is None:
            if not multirun:
                raise
            # A bug (or an out-of-memory error) in one job keeps its traceback in the log, and the
            # sweep goes on: its results.json says "failed" and the report exits non-zero.
            log.exception("this job failed with an unexpected error; the sweep goes on")
            return None
        print(f"error: {' '.join(str(found).splitlines())}", file=sys.stderr, flush=True)
        if multirun:
            return None
        raise SystemExit(found.exit_code) from None


def main_task(cfg: DictConfig) -> float | None:
    """The body of `train.py`: one experiment; returns the weak-labelled validation score a sweeper may
    optimise (never test PGR)."""
    # Imported here, not above: a typo in an override, `--help` or `--cfg job` should answer at once.
    from w2s_lightning import console, replay

    replay.code_digest()  # now, so a run record names the code this process loaded, not later edits
    started = time.perf_counter()
    console.announce(cfg)
    try:
        return report_errors(answer, cfg)
    except SystemExit as stop:
        # Lightning turns a SIGTERM into an exit with status 0 after the current batch; a scheduler
        # must see a killed job (143), and the user what to do.
        if type(stop).__name__ != "SIGTERMException":
            raise
        print(
            "error: stopped by SIGTERM during a stage; finished stages are cached: run the same command again "
            "to go on from them",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(143) from None
    finally:
        # Also after a failure: the block names the stage. A sweep ends with its own table instead.
        if not in_multirun():
            console.summary(cfg, time.perf_counter() - started)


def answer(cfg: DictConfig) -> float | None:
    """A fully cached rerun's answer from its run record, written without importing torch or
    Lightning (seconds); otherwise the pipeline's."""
    from w2s_lightning import console, replay

    if (replayed := replay.replay(cfg)) is not None:
        return replayed.score
    console.setup(cfg)  # before the pipeline imports anything that talks
    from w2s_lightning.pipeline import run

    heap.freeze_imports()
    return run(cfg)
