"""Every shipped config file composes with the real `train.yaml`, and what it names can be built."""

from __future__ import annotations

import functools
import inspect

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_method, instantiate
from lightning import Trainer

from w2s_lightning.losses import Loss

from .helpers import CONF_DIR

GROUPS = [
    "weak_model",
    "strong_model",
    "dataset",
    "loss",
    "trainer",
    "logger",
    "experiment",
    "pretrain",
    "labels",
    "refine",
    "select",
    "method",
]


def options(group: str) -> list[str]:
    folder = "model" if group.endswith("_model") else group
    return sorted(p.stem for p in (CONF_DIR / folder).glob("*.yaml"))


CASES = [(group, option) for group in GROUPS for option in options(group)]


@pytest.fixture(scope="module", autouse=True)
def hydra_context():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def compose_with(*overrides: str):
    base = ["pairs.require_larger_strong=false", "paths.output_dir=outputs/test"]
    return compose("train", overrides=[*base, *overrides], return_hydra_config=True)


def binds(target: str, kwargs: dict) -> None:
    """The YAML's keys are arguments the target accepts."""
    inspect.signature(get_method(target)).bind_partial(**kwargs)


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_config_file_composes_and_instantiates(group, option):
    cfg = compose_with(f"{group}={option}")
    if group.endswith("_model"):
        assert cfg[group].name == option
        assert cfg[group].size > 0
    elif group == "loss":
        assert isinstance(instantiate(cfg.loss), Loss)
    elif group == "dataset":
        binds(cfg.dataset.loader._target_, {k: None for k in cfg.dataset.loader if k != "_target_"})
        assert cfg.dataset.n_weak > 0 and cfg.dataset.n_test > 0
    elif group == "trainer":
        inspect.signature(Trainer).bind_partial(**{k: None for k in cfg.trainer if k != "_target_"})
    elif group == "logger":
        for node in cfg.logger.values():
            assert isinstance(instantiate(node), functools.partial)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_an_experiment_preset_sets_what_train_yaml_also_sets(experiment):
    """An experiment file's values win over train.yaml's (its name titles the report and groups the
    dashboard), and the command line still wins over both."""
    assert compose_with(f"experiment={experiment}").name == experiment
    assert compose_with(f"experiment={experiment}", "name=mine").name == "mine"


def test_launcher_presets_compose():
    for launcher in ("joblib", "ray_local", "ray_cluster", "slurm_gpu", "submitit_local"):
        cfg = compose_with(f"hydra/launcher={launcher}")
        assert "launcher" in cfg.hydra


def uncommented_keys(text: str) -> list[str]:
    """Keys with no comment on their line, the line above, or an enclosing key (a comment on
    `config_overrides:` covers the block under it). Block-scalar text is not a key."""
    missing, parents, block_indent = [], [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if block_indent is not None and (indent > block_indent or not stripped):
            continue
        block_indent = None
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        parents = [(d, c) for d, c in parents if d < indent]
        commented = "#" in line or (i > 0 and lines[i - 1].strip().startswith("#"))
        key, _, value = stripped.partition(":")
        value = value.split("#")[0].strip()
        covered = commented or any(c for _, c in parents)
        if value in (">-", ">", "|", "|-"):
            block_indent = indent
        exempt = key in {"name", "notes", "_target_", "_partial_", "defaults"} or "${" in value
        if not covered and not exempt and value:
            missing.append(f"{i + 1}: {stripped}")
        parents.append((indent, commented))
    return missing


@pytest.mark.parametrize("path", sorted(CONF_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF_DIR)))
def test_every_config_knob_has_a_comment(path):
    """Each knob in a shipped YAML file says why it has its value."""
    assert not uncommented_keys(path.read_text())
