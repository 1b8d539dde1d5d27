"""Which checkpoint of the student is kept. `last`: the end of training (the paper). `weak_val`:
evaluate every `every_n_steps` on validation labelled by the weak supervisor and keep the best
(EleutherAI/w2s's default: no ground truth needed). `oracle_val`: the same against ground-truth
validation labels; it leaks labels, so it is for analysis only and its runs are marked oracle."""

from __future__ import annotations

import copy
import math

import lightning as L
import numpy as np

from w2s_lightning.methods import Method


class LastCheckpoint(Method):
    name = "last"

    def val_targets(self, exp, labels) -> np.ndarray:
        return labels.val["prob"].to_numpy()  # logged as the student's agreement with its supervisor

    @property
    def key(self) -> None:
        return None  # the plain student: no selection in its key

    def callbacks(self) -> list:
        return []

    def trainer_overrides(self, n_train: int, batch_size: int) -> dict:
        return {}

    def restore(self, system) -> dict:
        return {}


class KeepBest(L.Callback):
    """Keeps a copy of the trainable weights at the best validation score seen so far."""

    def __init__(self, monitor: str):
        self.monitor, self.best, self.step, self.weights = monitor, -math.inf, None, None

    def on_validation_end(self, trainer, system) -> None:
        score = trainer.callback_metrics.get(self.monitor)
        if score is not None and float(score) > self.best:
            self.best, self.step = float(score), trainer.global_step
            self.weights = copy.deepcopy(system.trainable_weights())


class WeakValidation(LastCheckpoint):
    name = "weak_val"

    def __init__(self, every_n_steps: int = 50):
        self.every_n_steps = every_n_steps
        self.keeper: KeepBest | None = None

    @property
    def key(self) -> dict:
        return Method.key.fget(self)

    def val_targets(self, exp, labels) -> np.ndarray:
        return labels.val["prob"].to_numpy()

    def callbacks(self) -> list:
        self.keeper = KeepBest("student/val/acc")
        return [self.keeper]

    def trainer_overrides(self, n_train: int, batch_size: int) -> dict:
        batches = -(-n_train // batch_size)
        return {"val_check_interval": min(self.every_n_steps, batches), "check_val_every_n_epoch": 1}

    def restore(self, system) -> dict:
        if self.keeper is None or self.keeper.weights is None:
            return {}
        system.load_weights(self.keeper.weights)
        return {"step": self.keeper.step, "val_score": self.keeper.best}


class OracleValidation(WeakValidation):
    name = "oracle_val"
    uses_ground_truth = True

    def val_targets(self, exp, labels) -> np.ndarray:
        return exp.labelled("val")  # ground truth: declared by uses_ground_truth
