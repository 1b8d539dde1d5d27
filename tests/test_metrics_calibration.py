"""Expected calibration error against values computed by hand, and its place among the
binary metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from w2s_lightning.metrics import binary_metrics, expected_calibration_error


def test_ece_by_hand():
    probs = [0.95, 0.85, 0.25, 0.65, 0.55, 0.02, 0.92, 0.35]
    labels = [1, 0, 0, 1, 0, 0, 1, 1]
    # Confidence max(p, 1-p): 0.95 0.85 0.75 0.65 0.55 0.98 0.92 0.65; correct: 1 0 1 1 0 1 1 0.
    # Five bins over [0.5, 1]:
    #   (0.9, 1.0]: 0.95 0.98 0.92, all right   -> |1 - 0.95|    = 0.05, 3 examples
    #   (0.8, 0.9]: 0.85, wrong                 -> |0 - 0.85|    = 0.85, 1
    #   (0.7, 0.8]: 0.75, right                 -> |1 - 0.75|    = 0.25, 1
    #   (0.6, 0.7]: 0.65 right, 0.65 wrong      -> |0.5 - 0.65|  = 0.15, 2
    #   [0.5, 0.6]: 0.55, wrong                 -> |0 - 0.55|    = 0.55, 1
    expected = (3 * 0.05 + 0.85 + 0.25 + 2 * 0.15 + 0.55) / 8  # 0.2625
    assert expected_calibration_error(probs, labels, bins=5) == pytest.approx(expected)
    # One bin: |overall accuracy - mean confidence| = |5/8 - 6.3/8|.
    assert expected_calibration_error(probs, labels, bins=1) == pytest.approx(abs(5 - 6.3) / 8)


def test_a_calibrated_model_scores_zero():
    # p = 0.75 is right 3 times in 4, and so is p = 0.25 (which predicts class 0).
    probs = [0.75] * 4 + [0.25] * 4
    labels = [1, 1, 1, 0, 0, 0, 0, 1]  # the first four have p = 0.75
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_an_overconfident_model_scores_its_excess_confidence():
    # 99% sure every time, right half the time: the gap is 0.99 - 0.5.
    probs = [0.99] * 4 + [0.01] * 4
    labels = [1, 1, 0, 0, 0, 0, 1, 1]  # the first four have p = 0.99
    assert expected_calibration_error(probs, labels) == pytest.approx(0.49)


def test_ece_conventions_at_the_edges():
    # p = 0.5 predicts class 0 with confidence 0.5, in the first bin.
    assert expected_calibration_error([0.5], [0]) == pytest.approx(0.5)
    assert expected_calibration_error([0.5, 0.5], [0, 1]) == pytest.approx(0.0)
    assert math.isnan(expected_calibration_error([], []))


def test_binary_metrics_report_accuracy_auroc_and_ece():
    probs, labels = np.array([0.75] * 4 + [0.25] * 4), np.array([1, 1, 1, 0, 0, 0, 0, 1])
    metrics = binary_metrics(probs, labels)
    assert set(metrics) == {"acc", "auroc", "ece"}
    assert metrics["acc"] == 0.75 and metrics["auroc"] == pytest.approx(0.75) and metrics["ece"] == 0.0
