"""Weak-to-strong methods as options of four config groups, each a small class built by
`_target_` and called by the pipeline's recipe:

| group      | called as                           | returns                                   |
|------------|-------------------------------------|-------------------------------------------|
| `pretrain` | `pretrain(exp)`                     | the strong model's starting point (`Start`) |
| `labels`   | `labels(exp)`                       | soft labels for B and validation (`Labels`) |
| `refine`   | `refine(exp, labels, start)`        | labels relabelled or filtered (`Labels`)    |
| `select`   | passed to the student's stage       | which checkpoint of the student is kept     |

A method reads B and validation through `exp.unlabelled(split)`: no ground truth. One that uses
ground truth on purpose (an oracle) sets `uses_ground_truth = True`; its runs are marked and
kept out of the headline numbers. A new method is one module here and one YAML file."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import ClassVar


class Method:
    """A named method whose parameters are its `__init__` arguments, stored under the same names."""

    name: ClassVar[str]
    uses_ground_truth: ClassVar[bool] = False

    def params(self) -> dict:
        return {
            p.name: getattr(self, p.name)
            for p in inspect.signature(type(self).__init__).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    @property
    def label(self) -> str:
        """The name with every parameter that differs from its default, e.g. `knn(k=20)`."""
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        same = lambda a, b: (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)  # noqa: E731
        changed = [f"{k}={v!r}" for k, v in self.params().items() if not same(v, defaults.get(k))]
        return f"{self.name}({', '.join(changed)})" if changed else self.name

    @property
    def key(self) -> dict:
        """What a stage key holds of this method: its name and every parameter."""
        return {"method": self.name, **self.params()}


@dataclass
class Start:
    """Where the strong model starts: its catalogue entry (possibly pointing at a finetuned
    backbone) and the key of the stage that made it (None for the pretrained weights)."""

    spec: object
    key: str | None = None
    stages: list = field(default_factory=list)  # the stage that made it, for results.json and the cost


class Pretrained(Method):
    """The strong model starts from its pretrained weights (no extra stage)."""

    name = "pretrained"

    def __call__(self, exp) -> Start:
        return Start(exp.cfg.strong_model)


class NoRefinement(Method):
    """The weak labels as they are."""

    name = "none"

    def __call__(self, exp, labels, start):
        return labels


DEFAULTS = {"labels": "weak", "refine": "none", "select": "last", "pretrain": "pretrained"}


def method_label(methods: dict[str, Method]) -> str:
    """The run's method in one label: the weak labels' producer, then every step that is not the
    default, e.g. `bootstrap(chain=['pythia_410m'])+knn+weak_val`."""
    parts = [methods["labels"].label]
    parts += [methods[g].label for g in ("refine", "select", "pretrain") if methods[g].name != DEFAULTS[g]]
    return "+".join(parts)


def uses_ground_truth(methods: dict[str, Method]) -> bool:
    return any(m.uses_ground_truth for m in methods.values())
