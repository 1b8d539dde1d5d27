"""Each loss against values computed by hand, the warmup's continuity, and the batch
statistics (logconf's threshold, window's sum over the batch) under gradient accumulation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from w2s_lightning.errors import ConfigError
from w2s_lightning.losses import (
    LOSSES,
    ConfidenceWindow,
    CrossEntropy,
    EntropyRegularized,
    KLDivergence,
    LogConfidence,
    Product,
    ramp,
)

LOGITS = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0], [1.0, 3.0]])
TARGET = torch.tensor([0.8, 0.1, 0.5, 1.0])


def p1(row) -> float:
    a, b = row
    return math.exp(b) / (math.exp(a) + math.exp(b))


def xent_by_hand(logits, targets) -> float:
    total = 0.0
    for row, t in zip(logits.tolist(), targets):
        p = p1(row)
        total += -(t * math.log(p) + (1 - t) * math.log(1 - p))
    return total / len(targets)


def test_registry_holds_every_loss():
    assert set(LOSSES) == {"xent", "kl", "logconf", "product", "entropy", "window"}


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "conf" / "loss").glob("*.yaml")), ids=str)
def test_each_loss_file_builds_the_loss_of_its_name(path):
    loss = instantiate(OmegaConf.load(path))
    assert loss.name == path.stem
    assert loss.label == loss.name, "a shipped file holds the defaults, so runs of it share one label"


def test_xent_by_hand():
    assert CrossEntropy()(LOGITS, TARGET, 0.0).item() == pytest.approx(xent_by_hand(LOGITS, TARGET.tolist()), abs=1e-6)


def test_kl_by_hand_and_zero_at_the_target():
    entropy = sum(-(t * math.log(t) + (1 - t) * math.log(1 - t)) for t in TARGET.tolist() if 0 < t < 1) / 4
    expected = xent_by_hand(LOGITS, TARGET.tolist()) - entropy
    assert KLDivergence()(LOGITS, TARGET, 0.0).item() == pytest.approx(expected, abs=1e-6)
    matching = torch.log(torch.stack([1 - TARGET[:3], TARGET[:3]], -1))
    assert KLDivergence()(matching, TARGET[:3], 0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_logconf_by_hand():
    loss = LogConfidence(aux_coef=0.5, warmup_frac=0.5)
    # progress 0.25 is halfway through warmup: coefficient 0.25.
    probs = [p1(r) for r in LOGITS.tolist()]  # 0.731, 0.119, 0.5, 0.881
    positive_share = float(TARGET.mean())  # 0.6
    threshold = float(np.quantile(probs, 1 - positive_share))  # linear interpolation, as torch.quantile
    hard = [float(p >= threshold) for p in probs]
    assert hard == [1.0, 0.0, 0.0, 1.0]  # threshold 0.546: the two most confident positives
    mixed = [(1 - 0.25) * t + 0.25 * h for t, h in zip(TARGET.tolist(), hard)]
    assert loss(LOGITS, TARGET, 0.25).item() == pytest.approx(xent_by_hand(LOGITS, mixed), abs=1e-6)
    # Before any training the target is exactly the weak label.
    assert loss(LOGITS, TARGET, 0.0).item() == pytest.approx(xent_by_hand(LOGITS, TARGET.tolist()), abs=1e-6)


def test_product_by_hand():
    loss = Product(alpha=1.0, beta=1.0, warmup_frac=0.0)
    targets = []
    for row, t in zip(LOGITS.tolist(), TARGET.tolist()):
        p = p1(row)
        pos, neg = t * p, (1 - t) * (1 - p)
        targets.append(pos / (pos + neg))
    assert loss(LOGITS, TARGET, 0.5).item() == pytest.approx(xent_by_hand(LOGITS, targets), abs=1e-6)


@pytest.mark.parametrize("warmup_frac", [0.1, 0.2, 0.5])
def test_warmup_ramps_without_a_jump(warmup_frac):
    steps = np.linspace(0, 1, 10_001)
    values = np.array([ramp(s, 0.75, warmup_frac) for s in steps])
    assert values[0] == 0.0
    assert values[-1] == pytest.approx(0.75)
    # Largest step between neighbours is the slope times the grid spacing: no jump anywhere.
    assert np.abs(np.diff(values)).max() <= 0.75 / warmup_frac * (steps[1] - steps[0]) + 1e-12
    assert ramp(warmup_frac, 0.75, warmup_frac) == pytest.approx(0.75)
    assert ramp(warmup_frac / 2, 0.75, warmup_frac) == pytest.approx(0.375)


def test_logconf_under_accumulation_equals_the_full_batch_loss():
    """Micro-batches that share the full batch's threshold add up to the full-batch loss;
    without it each micro-batch would harden against its own, different, threshold."""
    torch.manual_seed(0)
    logits = torch.randn(16, 2)
    target = torch.rand(16)
    loss = LogConfidence(aux_coef=0.75, warmup_frac=0.2)
    full = loss(logits, target, 0.5)
    context = loss.batch_context(torch.softmax(logits, -1)[:, 1], target)
    halves = [loss(logits[i : i + 8], target[i : i + 8], 0.5, context) for i in (0, 8)]
    assert (sum(halves) / 2).item() == pytest.approx(full.item(), abs=1e-6)
    alone = [loss(logits[i : i + 8], target[i : i + 8], 0.5) for i in (0, 8)]
    assert (sum(alone) / 2).item() != pytest.approx(full.item(), abs=1e-6)


def test_logconf_on_a_one_example_batch_hardens_to_the_students_own_argmax():
    # A quantile of one value is that value: with `>=` the hardened label would always be 1.
    loss = LogConfidence(aux_coef=1.0, warmup_frac=0.0)
    confident_no = torch.tensor([[2.0, 0.0]])
    assert loss.batch_context(torch.softmax(confident_no, -1)[:, 1], torch.tensor([0.9]))["threshold"] == 0.5
    # Target = hard(student) = 0, so the loss is the student's own cross-entropy towards class 0.
    assert loss(confident_no, torch.tensor([0.9]), 1.0).item() == pytest.approx(-math.log(1 - p1([2.0, 0.0])))


def binary_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_entropy_by_hand():
    loss = EntropyRegularized(aux_coef=0.5, warmup_frac=0.2)
    # progress 0.1 is halfway through warmup: coefficient 0.25.
    xents = [xent_by_hand(LOGITS[i : i + 1], [t]) for i, t in enumerate(TARGET.tolist())]
    entropies = [binary_entropy(p1(r)) for r in LOGITS.tolist()]
    expected = sum(0.75 * x + 0.25 * h for x, h in zip(xents, entropies)) / 4
    assert loss(LOGITS, TARGET, 0.1).item() == pytest.approx(expected, abs=1e-6)
    # Before any training it is plain cross-entropy to the weak labels.
    assert loss(LOGITS, TARGET, 0.0).item() == pytest.approx(xent_by_hand(LOGITS, TARGET.tolist()), abs=1e-6)


def test_entropy_term_pushes_the_student_to_commit():
    """At full strength the gradient is that of the mean entropy: dH/dz1 = p(1-p) log((1-p)/p)
    per row. (EleutherAI/w2s detaches the student's prediction, which makes this gradient zero.)"""
    logits = LOGITS.clone().requires_grad_(True)
    EntropyRegularized(aux_coef=1.0, warmup_frac=0.0)(logits, TARGET, 0.5).backward()
    for row, grad in zip(LOGITS.tolist(), logits.grad.tolist()):
        p = p1(row)
        d = p * (1 - p) * math.log((1 - p) / p) / 4
        assert grad == pytest.approx([-d, d], abs=1e-6)
        # Descending it moves p away from 0.5: the student grows more confident.
        assert (grad[1] <= 0) == (p >= 0.5)


def test_window_by_hand():
    # Student confidences: 0.731, 0.881, 0.5, 0.881.
    xents = [xent_by_hand(LOGITS[i : i + 1], [t]) for i, t in enumerate(TARGET.tolist())]
    # radius 0.15: only the third row (0.5 < 0.65) trains; the sum is divided by all 4 rows.
    assert ConfidenceWindow(radius=0.15)(LOGITS, TARGET, 0.0).item() == pytest.approx(math.log(2) / 4, abs=1e-6)
    # radius 0.3: the first row (0.731 < 0.8) joins it.
    assert ConfidenceWindow(radius=0.3)(LOGITS, TARGET, 0.0).item() == pytest.approx((xents[0] + xents[2]) / 4)
    # radius 0.51 holds every example: plain cross-entropy (EleutherAI trains its weak model so).
    full = ConfidenceWindow(radius=0.51)(LOGITS, TARGET, 0.3).item()
    assert full == pytest.approx(xent_by_hand(LOGITS, TARGET.tolist()), abs=1e-6)


def test_an_empty_window_gives_zero_loss_and_zero_gradient():
    logits = LOGITS.clone().requires_grad_(True)
    loss = ConfidenceWindow(radius=0.0)(logits, TARGET, 0.5)  # confidence 0.5 is not < 0.5
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_window_midweak_takes_the_median_weak_confidence():
    loss = ConfidenceWindow(radius="midweak")
    with pytest.raises(RuntimeError, match="prepare"):
        loss(LOGITS, TARGET, 0.0)
    # |weak - 0.5| = 0.3, 0.4, 0.0, 0.5: torch's median of an even count is the lower middle, 0.3.
    loss.prepare(TARGET.numpy())
    assert loss.resolved_radius == pytest.approx(0.3)
    assert loss(LOGITS, TARGET, 0.0).item() == pytest.approx(ConfidenceWindow(radius=0.3)(LOGITS, TARGET, 0.0).item())
    assert loss.label == "window(radius='midweak')"
    with pytest.raises(ConfigError, match="midweak"):
        ConfidenceWindow(radius="median")


def test_window_under_accumulation_equals_the_full_batch_loss():
    """The trainer weights each micro-batch's loss by its share of the batch, so the window's
    per-micro-batch divisor adds up to the full batch's: no batch context is needed."""
    torch.manual_seed(0)
    logits, target = torch.randn(16, 2) * 2, torch.rand(16)
    loss = ConfidenceWindow(radius=0.2)
    parts = [loss(logits[i : i + 4], target[i : i + 4], 0.5) * (4 / 16) for i in range(0, 16, 4)]
    assert sum(parts).item() == pytest.approx(loss(logits, target, 0.5).item(), abs=1e-6)


def test_a_loss_label_names_its_non_default_parameters():
    assert LogConfidence().label == "logconf" and CrossEntropy().label == "xent"
    assert LogConfidence(aux_coef=0.5).label == "logconf(aux_coef=0.5)"
    assert Product(alpha=2.0, warmup_frac=0.3).label == "product(alpha=2.0, warmup_frac=0.3)"
    assert EntropyRegularized().label == "entropy" and ConfidenceWindow(radius=0.15).label == "window"
    assert EntropyRegularized(aux_coef=0.25).label == "entropy(aux_coef=0.25)"
