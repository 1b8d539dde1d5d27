"""Errors a user can act on. Each message names what is wrong (the file, the knob, the stage)
and the fix; `train.py` prints it as one line and exits non-zero, without a traceback. Any
other exception is a bug and keeps its traceback."""

from __future__ import annotations


class W2SError(Exception):
    """Base of every error caused by the user's input or by a result that must not be reported."""

    exit_code = 2  # usage errors, as argparse uses


class ConfigError(W2SError, ValueError):
    """A config knob out of range or inconsistent with another."""


class DatasetError(W2SError, ValueError):
    """Bad dataset input; the message names the file, the column and the fix."""


class ModelLoadError(W2SError, OSError):
    """The model could not be loaded; the message says where it looked and how to fix it."""


class TrainingDiverged(W2SError):
    """A stage produced a non-finite loss or prediction: its numbers are not a result."""

    exit_code = 1


class DataMismatch(W2SError):
    """Predictions and examples do not line up by id: something changed under a cache key."""

    exit_code = 1
