"""k-nearest-neighbour smoothing of the weak labels in the strong model's frozen feature space
(EleutherAI/w2s's `knn` probe). Where the strong model already sees two texts as alike, their
labels should agree; an isolated weak error is outvoted by its neighbours:

    p_i ← s · weak_i + (1 − s) · mean_{j ∈ N_k(i)} weak_j

N_k(i): the k examples of B most similar to i, never i itself nor another example of its item
(siblings share a question and differ in the answer: near in features, apart in label by
construction). A validation example's neighbours are its k nearest examples of B."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from w2s_lightning.errors import ConfigError
from w2s_lightning.methods.features import FeatureRefiner, device

METRICS = ("cosine", "euclidean")
BLOCK = 1024  # query rows per similarity block: B x B at once would not fit for large B


def similarity(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "cosine":
        return F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
    return -torch.cdist(x, y)


def neighbour_mean(
    query: torch.Tensor,
    reference: torch.Tensor,
    targets: torch.Tensor,
    k: int,
    metric: str = "cosine",
    query_groups: torch.Tensor | None = None,
    reference_groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mean of `targets` over each query's k most similar reference rows, skipping rows of the
    query's own group; NaN for a query with no eligible neighbour."""
    on = device()
    reference, targets = reference.to(on), targets.to(on, torch.float32)
    out = []
    for start in range(0, len(query), BLOCK):
        sim = similarity(query[start : start + BLOCK].to(on), reference, metric)
        if query_groups is not None:
            same = query_groups[start : start + BLOCK, None].to(on) == reference_groups[None, :].to(on)
            sim = sim.masked_fill(same, -torch.inf)
        top = sim.topk(min(k, reference.shape[0]), dim=1)
        valid = torch.isfinite(top.values)
        total = (targets[top.indices] * valid).sum(1)
        out.append((total / valid.sum(1)).cpu())  # 0 / 0 = NaN: no eligible neighbour
    return torch.cat(out)


class KnnRefinement(FeatureRefiner):
    name = "knn"

    def __init__(
        self, k: int = 50, self_weight: float = 0.0, metric: str = "cosine", relabel: bool = True, drop: float = 0.0
    ):
        if k < 1:
            raise ConfigError(f"refine.k={k}: must be an integer >= 1; fix: set refine.k to e.g. 50")
        if not 0.0 <= self_weight < 1.0:
            raise ConfigError(f"refine.self_weight={self_weight}: must be in [0, 1); fix: set it to e.g. 0.0")
        if metric not in METRICS:
            raise ConfigError(f"refine.metric={metric}: not one of {METRICS}; fix: set refine.metric to one of them")
        self.k, self.self_weight, self.metric, self.relabel, self.drop = k, self_weight, metric, relabel, drop
        self.check()

    def predict(self, exp, b, weak, groups, val, weak_val):
        codes = torch.as_tensor(pd.factorize(groups)[0])
        smoothed = neighbour_mean(b, b, weak, self.k, self.metric, codes, codes)
        smoothed = torch.where(smoothed.isnan(), weak, smoothed)  # B is one item: nothing to smooth with
        new_val = None if val is None else self.mix(weak_val, neighbour_mean(val, b, weak, self.k, self.metric))
        return self.mix(weak, smoothed), new_val

    def mix(self, own: torch.Tensor, neighbours: torch.Tensor) -> np.ndarray:
        return (self.self_weight * own + (1 - self.self_weight) * neighbours).double().numpy()
