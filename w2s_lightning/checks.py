"""Knob checks that run before any work: a value out of range stops the run with one message
that names the knob, the value and the fix, instead of failing deep inside a stage (or, worse,
training on nothing)."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from w2s_lightning.config import ATTENTION, MODEL_SLOTS
from w2s_lightning.errors import ConfigError

ABSENT = object()


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# (what the knob must be, the test); the wording reads "<knob>=<value>: must be <what>".
COUNT = ("an integer >= 1", lambda v: is_int(v) and v >= 1)
COUNT_OR_NULL = ("null or an integer >= 1", lambda v: v is None or COUNT[1](v))
SHARE = ("a number with 0 <= x < 1", lambda v: is_number(v) and 0 <= v < 1)
WEIGHT = ("a number with 0 <= x <= 1", lambda v: is_number(v) and 0 <= v <= 1)
POSITIVE = ("a finite number > 0", lambda v: is_number(v) and v > 0)

SLOT_RULES = {
    "batch_size": COUNT,
    "eval_batch_size": COUNT,
    "micro_batch_size": COUNT_OR_NULL,
    "lr": POSITIVE,
    "max_length": COUNT,
    "attn_implementation": (f"null or one of {', '.join(ATTENTION)}", lambda v: v is None or v in ATTENTION),
}

# knob -> (what it must be, test, required). Optional knobs are checked only where the chosen
# option has them (the loss's parameters, knobs a dataset file may not carry).
RULES: dict[str, tuple[str, Callable[[Any], bool], bool]] = {
    "seed": ("an integer >= 0", lambda v: is_int(v) and v >= 0, True),
    "ceiling_split": ("a or b", lambda v: v in ("a", "b"), True),
    "threads": ("auto or an integer >= 1", lambda v: v == "auto" or COUNT[1](v), False),
    "prefetch_features": ("auto, true or false", lambda v: v == "auto" or isinstance(v, bool), False),
    **{f"dataset.{n}": (*COUNT, True) for n in ("n_weak", "n_strong", "n_val", "n_test")},
    "dataset.holdout_fraction": ("a number with 0 < x < 1", lambda v: is_number(v) and 0 < v < 1, False),
    "dataset.max_overlap": (*SHARE, False),
    "train.epochs": (*COUNT, True),
    "train.warmup_ratio": (*SHARE, True),
    "train.grad_clip": ("null or a finite number > 0", lambda v: v is None or POSITIVE[1](v), True),
    "loss.aux_coef": (*WEIGHT, False),
    "loss.warmup_frac": (*WEIGHT, False),
    **{f"{slot}.{k}": (*rule, True) for slot in MODEL_SLOTS for k, rule in SLOT_RULES.items()},
}


def show(value: Any) -> str:
    """A value as it is written on the command line."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def check_config(cfg: DictConfig) -> None:
    """Raise a `ConfigError` for the first knob out of range, e.g.
    `train.epochs=0: must be an integer >= 1; fix: set train.epochs to an integer >= 1`."""
    for knob, (what, ok, required) in RULES.items():
        value = OmegaConf.select(cfg, knob, default=ABSENT)
        if value is ABSENT and not required:
            continue
        if value is ABSENT:
            raise ConfigError(f"{knob} is missing; fix: set {knob} to {what}")
        if not ok(value):
            raise ConfigError(f"{knob}={show(value)}: must be {what}; fix: set {knob} to {what}")
    if OmegaConf.select(cfg, "trainer.precision", default=None) == "auto":
        # Lightning has no "auto"; the presets' own value is the per-machine choice.
        raise ConfigError(
            "trainer.precision=auto: not a Lightning precision; the trainer presets already choose bf16-mixed "
            "or 32-true by the hardware (w2s_lightning/precision.py); fix: drop the trainer.precision override, "
            "or set it to 32-true or bf16-mixed"
        )
    for slot in MODEL_SLOTS:
        if cfg[slot].get("compile", False):
            check_compile(cfg, slot)
        micro, batch = cfg[slot].micro_batch_size, cfg[slot].batch_size
        if micro is not None and micro > batch:
            raise ConfigError(
                f"{slot}.micro_batch_size={micro}: larger than {slot}.batch_size={batch}; "
                f"fix: set {slot}.micro_batch_size to at most {batch}, or null for no accumulation"
            )


# Strategies that wrap or shard the model after it is built, which a compiled backbone would miss.
SHARDING = ("fsdp", "deepspeed", "modelparallel", "model_parallel")


def check_compile(cfg: DictConfig, slot: str) -> None:
    """`<slot>.compile=true` where it cannot work: under a sharding strategy, or on a CPU without
    the C++ compiler inductor builds its kernels with."""
    strategy = OmegaConf.select(cfg, "trainer.strategy", default="auto")
    name = str(strategy.get("_target_", "") if isinstance(strategy, DictConfig) else strategy).lower()
    if any(s in name for s in SHARDING):
        raise ConfigError(
            f"{slot}.compile=true under the {name.rsplit('.', 1)[-1]} strategy: the strategy wraps the model after "
            f"it is compiled; fix: set {slot}.compile=false, or train on one device or with DDP"
        )
    if cfg.trainer.accelerator == "cpu" and not cpp_compiler():
        raise ConfigError(
            f"{slot}.compile=true on a CPU needs a C++ compiler (inductor builds its kernels with one) and none was "
            f"found (CXX, g++, clang++, c++); fix: install one (apt install g++) or set {slot}.compile=false"
        )


def cpp_compiler() -> str | None:
    """The compiler inductor would use on a CPU: $CXX, else the first of g++, clang++, c++ on PATH."""
    if cxx := os.environ.get("CXX"):
        return shutil.which(cxx)
    return next((path for name in ("g++", "clang++", "c++") if (path := shutil.which(name))), None)
