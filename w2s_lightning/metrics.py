"""Test metrics and the performance gap recovered."""

from __future__ import annotations

import numpy as np


def auroc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random positive outranks a random negative (ties count half);
    NaN when only one class is present."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(probs, kind="mergesort")
    ranks = np.empty(len(probs))
    sorted_probs = np.asarray(probs)[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_probs, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """How far confidence is from accuracy, on average (Guo et al. 2017), for p(label = 1).
    Convention: the prediction is p > 0.5 and its confidence max(p, 1 - p), in [0.5, 1];
    that range is cut into `bins` equal-width bins, right-closed, (lo, hi], with 0.5 in the
    first; the ECE is the mean over bins of |accuracy - mean confidence|, weighted by the share
    of examples in the bin (so 10 bins here equal 20 bins over [0, 1]). NaN for no examples."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if probs.size == 0:
        return float("nan")
    confidence = np.maximum(probs, 1.0 - probs)
    correct = ((probs > 0.5) == labels).astype(np.float64)
    inner_edges = np.linspace(0.5, 1.0, bins + 1)[1:-1]
    which = np.searchsorted(inner_edges, confidence, side="left")
    # Per bin, |sum(correct) - sum(confidence)| / N = share * |accuracy - mean confidence|.
    gap = np.bincount(which, correct, minlength=bins) - np.bincount(which, confidence, minlength=bins)
    return float(np.abs(gap).sum() / probs.size)


def binary_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    return {
        "acc": float(((probs > 0.5) == labels).mean()),
        "auroc": auroc(probs, labels),
        "ece": expected_calibration_error(probs, labels),
    }


def agreement(probs_a: np.ndarray, probs_b: np.ndarray) -> float:
    """Share of examples where two models predict the same class."""
    return float(((np.asarray(probs_a) > 0.5) == (np.asarray(probs_b) > 0.5)).mean())


def pgr(weak: float, student: float, ceiling: float) -> float | None:
    """(student - weak) / (ceiling - weak); undefined (None) when the ceiling does not beat the
    weak supervisor, where the ratio would be meaningless or explode."""
    if not ceiling > weak:
        return None
    return (student - weak) / (ceiling - weak)
