"""Logistic-regression relabelling (EleutherAI/w2s's `logreg` probe): a linear probe on the strong
model's frozen features, fitted to the weak labels, relabels B with what the strong model's
features can express linearly; the weak supervisor's idiosyncratic errors, which a linear
function of those features cannot fit, are smoothed away.

The probe is cross-fitted: B's items are split into `folds` folds and each example is relabelled
by the probe fitted on the other folds, so no example's new label is its own weak label handed
back. The fit: features standardised by the training folds' mean and deviation, then

    min_{w, c}  mean_i BCE(σ(w·x_i + c), weak_i) + l2 · ‖w‖²

by L-BFGS from zero. Validation's new labels are the mean of the fold probes' predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from w2s_lightning.errors import ConfigError
from w2s_lightning.methods.features import FeatureRefiner, device


def item_folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold in 0..folds-1 for every example, by item, items shuffled by `seed`."""
    items = pd.Series(pd.unique(groups)).sample(frac=1.0, random_state=seed).to_numpy()
    fold_of = {item: i % folds for i, item in enumerate(items)}
    return np.array([fold_of[g] for g in groups])


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, max_iter: int):
    """Weights and bias of an L2-penalised logistic regression on soft targets `y`."""
    w = torch.zeros(x.shape[1], device=x.device, requires_grad=True)
    c = torch.zeros((), device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, c], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + c, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach(), c.detach()


def fit_probe(x: torch.Tensor, y: torch.Tensor, l2: float, max_iter: int):
    """A logistic probe fitted on standardised `x`: a function from features to p(label = 1)."""
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    w, c = fit_logistic((x - mean) / std, y, l2, max_iter)

    def probe(z: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(((z.to(x.device, torch.float32) - mean) / std) @ w + c).double().cpu().numpy()

    return probe


def cross_fitted(
    x: torch.Tensor, y: torch.Tensor, fold: np.ndarray, l2: float, max_iter: int, val: torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Out-of-fold p(label = 1) for every row of `x`, and the mean of the fold probes' p on `val`."""
    on = device()
    x, y = x.to(on, torch.float32), y.to(on, torch.float32)
    out, val_probs = np.empty(len(x)), []
    for k in np.unique(fold):
        held_out = fold == k
        mask = torch.as_tensor(held_out, device=on)
        probe = fit_probe(x[~mask], y[~mask], l2, max_iter)
        out[held_out] = probe(x[mask])
        if val is not None:
            val_probs.append(probe(val))
    return out, np.mean(val_probs, axis=0) if val is not None else None


class LogregRefinement(FeatureRefiner):
    name = "logreg"

    def __init__(self, folds: int = 5, l2: float = 1e-3, max_iter: int = 500, relabel: bool = True, drop: float = 0.0):
        if folds < 2:
            raise ConfigError(f"refine.folds={folds}: must be an integer >= 2; fix: set refine.folds to e.g. 5")
        if l2 < 0 or max_iter < 1:
            raise ConfigError(f"refine.l2={l2}, refine.max_iter={max_iter}: need l2 >= 0 and max_iter >= 1")
        self.folds, self.l2, self.max_iter, self.relabel, self.drop = folds, l2, max_iter, relabel, drop
        self.check()

    def predict(self, exp, b, weak, groups, val, weak_val):
        if (items := len(pd.unique(groups))) < self.folds:
            raise ConfigError(f"refine.folds={self.folds}: B has only {items} items; fix: set refine.folds <= {items}")
        return cross_fitted(b, weak, item_folds(groups, self.folds, exp.cfg.seed), self.l2, self.max_iter, val)
