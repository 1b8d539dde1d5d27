"""Config plumbing: the model catalogue's schema, its registration for both model
slots, and the resolvers that the YAML files use."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
MODEL_SLOTS = ("weak_model", "strong_model")


@dataclass
class LoraSpec:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class ModelSpec:
    """One entry of the model catalogue; a typo in a model file fails at start-up."""

    name: str = "???"
    size: float = "???"  # type: ignore[assignment]
    pretrained: str = "???"
    tokenizer: str | None = None
    from_scratch: bool = False
    config_overrides: dict[str, Any] = field(default_factory=dict)
    pooling: str = "auto"
    lr: float = 1e-5
    batch_size: int = 32
    micro_batch_size: int | None = None
    eval_batch_size: int = 64
    max_length: int = 512
    dropout: float | None = 0.0
    head_init_std: float = 0.0
    linear_probe: bool = False
    lora: LoraSpec | None = None
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    notes: str = ""


def load_model_spec(path: Path) -> Any:
    """Validate one catalogue file against `ModelSpec`."""
    schema = OmegaConf.structured(ModelSpec)
    try:
        return OmegaConf.merge(schema, OmegaConf.load(path))
    except Exception as err:  # omegaconf raises several error types; all mean the same here
        raise ValueError(f"model catalogue file {path} does not match ModelSpec: {err}") from err


def register_model_catalogue(conf_dir: Path = CONF_DIR) -> list[str]:
    """Register every `conf/model/*.yaml` as an option of both the weak and the strong slot,
    so the command line reads `weak_model=gpt2 strong_model=gpt2_large`."""
    cs = ConfigStore.instance()
    names = []
    for path in sorted((conf_dir / "model").glob("*.yaml")):
        node = load_model_spec(path)
        for slot in MODEL_SLOTS:
            cs.store(group=slot, name=path.stem, node=node)
        names.append(path.stem)
    return names


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("pid"):
        # Keeps output folders distinct for jobs that start in the same microsecond.
        OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True)


def setup() -> None:
    """Everything that must happen before Hydra composes a config."""
    register_resolvers()
    register_model_catalogue()
