"""Student losses. Each takes logits (N, 2), soft targets p(label = 1) of shape (N,), and the
fraction of training done, and returns a scalar. A new loss is one subclass and one YAML
file in `conf/loss/`; subclasses register themselves by `name`."""

from __future__ import annotations

import inspect
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from w2s_lightning.errors import ConfigError

LOSSES: dict[str, type[Loss]] = {}


def two_class(target: torch.Tensor) -> torch.Tensor:
    return torch.stack([1.0 - target, target], dim=-1)


def ramp(progress: float, peak: float, warmup_frac: float) -> float:
    """Rises linearly from 0 to `peak` over `warmup_frac` of training, then stays: continuous,
    with no jump when the warmup ends."""
    if warmup_frac <= 0:
        return peak
    return peak * min(1.0, progress / warmup_frac)


class Loss(nn.Module):
    name: ClassVar[str]
    # True when the loss needs a statistic of the whole configured batch; under gradient
    # accumulation the trainer then computes it over all micro-batches first.
    needs_batch_context: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        LOSSES[cls.name] = cls

    def batch_context(self, probs: torch.Tensor, target: torch.Tensor) -> dict:
        return {}

    def prepare(self, train_targets) -> None:
        """Called once with every training target (p(label = 1), array or tensor) before the
        student trains, for a loss that needs a statistic of the whole training set."""

    @property
    def label(self) -> str:
        """The name with every parameter that differs from its default, e.g. `logconf(aux_coef=0.5)`:
        runs of one loss with other parameters are other experiments, and the report keeps them apart."""
        params = inspect.signature(type(self).__init__).parameters.values()
        changed = [
            f"{p.name}={getattr(self, p.name)!r}"
            for p in params
            if p.default is not inspect.Parameter.empty and getattr(self, p.name) != p.default
        ]
        return f"{self.name}({', '.join(changed)})" if changed else self.name

    def forward(self, logits, target, progress: float, context: dict | None = None) -> torch.Tensor:
        raise NotImplementedError


class CrossEntropy(Loss):
    """Cross-entropy against the soft labels: the plain weak-to-strong baseline."""

    name = "xent"

    def forward(self, logits, target, progress, context=None):
        return F.cross_entropy(logits.float(), two_class(target.float()))


class KLDivergence(Loss):
    """KL(target || student): the gradient of cross-entropy, but zero when the student
    matches its targets, so the logged value reads as distance to the supervisor."""

    name = "kl"

    def forward(self, logits, target, progress, context=None):
        t = two_class(target.float())
        return (torch.xlogy(t, t) - t * F.log_softmax(logits.float(), -1)).sum(-1).mean()


class LogConfidence(Loss):
    """The auxiliary confidence loss of Burns et al. (2023): the target mixes the weak label
    with the student's own hardened prediction, (1 - a) * weak + a * hard(student). The
    hardening threshold makes the hardened labels as positive as the weak labels are on
    average over the batch; a ramps from 0 to `aux_coef` over `warmup_frac` of training."""

    name = "logconf"
    needs_batch_context = True

    def __init__(self, aux_coef: float = 0.75, warmup_frac: float = 0.2):
        super().__init__()
        self.aux_coef, self.warmup_frac = aux_coef, warmup_frac

    def batch_context(self, probs, target):
        if probs.numel() < 2:
            # A one-example batch (the last of an epoch) has no quantile to speak of: the
            # hardened label is then the student's own argmax.
            return {"threshold": torch.tensor(0.5, device=probs.device)}
        positive_share = target.float().mean()
        return {"threshold": torch.quantile(probs.float(), (1.0 - positive_share).clamp(0, 1))}

    def forward(self, logits, target, progress, context=None):
        probs = torch.softmax(logits.float(), -1)[:, 1].detach()
        context = context or self.batch_context(probs, target)
        hard = (probs >= context["threshold"]).float()
        coef = ramp(progress, self.aux_coef, self.warmup_frac)
        mixed = (1.0 - coef) * target.float() + coef * hard
        return F.cross_entropy(logits.float(), two_class(mixed))


class Product(Loss):
    """Cross-entropy against weak^alpha * student^beta (normalised, no gradient through the
    target): the student keeps the weak label's direction but sharpens it by its own
    belief; beta ramps from 0 over `warmup_frac`."""

    name = "product"

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, warmup_frac: float = 0.1):
        super().__init__()
        self.alpha, self.beta, self.warmup_frac = alpha, beta, warmup_frac

    def forward(self, logits, target, progress, context=None):
        beta = ramp(progress, self.beta, self.warmup_frac)
        probs = torch.softmax(logits.float(), -1).detach()
        combined = two_class(target.float()).pow(self.alpha) * probs.pow(beta)
        combined = combined / combined.sum(-1, keepdim=True).clamp(min=1e-12)
        return F.cross_entropy(logits.float(), combined)


class EntropyRegularized(Loss):
    """Cross-entropy to the weak labels plus a penalty on the student's own entropy:
    (1 - c) * xent(weak, student) + c * H(student), c ramping from 0 to `aux_coef` over
    `warmup_frac`. Minimising H pushes the student to commit to a side where the weak labels
    are unsure, a soft version of logconf's hardened self-labels (entropy minimisation,
    Grandvalet & Bengio 2004). This is the `entropy` loss of EleutherAI/w2s (`w2s/loss.py`,
    logconf with `harden=False`), with one difference: there the student's prediction enters
    as a detached target, so its value is this one but the entropy term passes no gradient
    and the loss trains as (1 - c) * xent; here the gradient flows, as the name promises."""

    name = "entropy"

    def __init__(self, aux_coef: float = 0.5, warmup_frac: float = 0.2):
        super().__init__()
        self.aux_coef, self.warmup_frac = aux_coef, warmup_frac

    def forward(self, logits, target, progress, context=None):
        log_probs = F.log_softmax(logits.float(), -1)
        xent = -(two_class(target.float()) * log_probs).sum(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        coef = ramp(progress, self.aux_coef, self.warmup_frac)
        return ((1.0 - coef) * xent + coef * entropy).mean()


class ConfidenceWindow(Loss):
    """Cross-entropy to the weak labels on only the examples where the student is still unsure,
    max(p, 1 - p) < 0.5 + `radius`, summed and divided by the whole batch size (so an example
    that leaves the window simply stops counting, and a window holding nothing gives 0). Once
    the student is confident it is no longer pulled back towards the weak label, which leaves
    room to disagree with the supervisor. No warmup. `radius: midweak` sets the radius to the
    median of |weak - 0.5| over the student's training set, computed in `prepare`. This is the
    `window` loss of EleutherAI/w2s (`w2s/loss.py`, default radius 0.15; `w2s/sft.py` for
    midweak)."""

    name = "window"

    def __init__(self, radius: float | str = 0.15):
        super().__init__()
        if isinstance(radius, str) and radius != "midweak":
            raise ConfigError(f"loss.radius={radius!r}: a number or 'midweak'")
        self.radius = radius
        self.resolved_radius = None if radius == "midweak" else float(radius)

    def prepare(self, train_targets):
        if self.radius == "midweak":
            # torch's median, the lower middle value for an even count, as EleutherAI/w2s.
            confidence = (torch.as_tensor(train_targets, dtype=torch.float64) - 0.5).abs()
            self.resolved_radius = confidence.median().item()

    def forward(self, logits, target, progress, context=None):
        if self.resolved_radius is None:
            raise RuntimeError("loss window(radius='midweak') needs loss.prepare(train_targets) before training")
        logits = logits.float()
        unsure = torch.softmax(logits, -1).max(-1).values < 0.5 + self.resolved_radius
        per_example = F.cross_entropy(logits, two_class(target.float()), reduction="none")
        return per_example[unsure].sum() / logits.shape[0]
