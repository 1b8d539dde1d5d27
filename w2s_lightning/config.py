"""Config plumbing: the model catalogue's schema, its registration for both model
slots, and the resolvers that the YAML files use."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from w2s_lightning import precision, threads
from w2s_lightning.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
MODEL_SLOTS = ("weak_model", "strong_model")
# transformers' attention kernels (`attn_implementation`); which ones a model supports, it says when built.
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
# Config groups that say where output goes or how it is watched, not what a run computes.
NOT_RESULTS = {"paths", "logger", "hydra"}


@dataclass
class LoraSpec:
    enabled: bool = False  # switch on per run: strong_model.lora.enabled=true
    r: int = 8  # adapter rank
    alpha: int = 16  # scale = alpha / r
    dropout: float = 0.0  # dropout on the adapter input
    # peft's name patterns; "all-linear" adapts every linear layer but the output head
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class ModelSpec:
    """One entry of the model catalogue; a typo in a model file fails at start-up."""

    name: str = "???"  # slash-free option name, equal to the file name
    size: float = "???"  # type: ignore[assignment]  # parameter count: orders weak/strong pairs
    pretrained: str = "???"  # hub id, local folder, pkg://module/dir, or model_type:NAME (random weights)
    revision: str | None = None  # hub branch, tag or commit, e.g. a Pythia checkpoint step1000; hub ids only
    tokenizer: str | None = None  # defaults to `pretrained`
    from_scratch: bool = False  # random init from the pretrained config (a weak model with no prior)
    config_overrides: dict[str, Any] = field(default_factory=dict)  # applied to the HF config
    pooling: str = "auto"  # last | mean | cls; auto: last for decoders, cls for encoders
    lr: float = 1e-5  # per-model learning rate, as in the reference's model table
    batch_size: int = 32  # examples per optimizer step
    micro_batch_size: int | None = None  # examples per forward pass; null = batch_size (no accumulation)
    eval_batch_size: int = 64  # examples per inference batch
    max_length: int = 512  # tokens; longer texts are truncated and the share is logged
    dropout: float | None = (
        0.0  # every dropout prob in the HF config; 0 = deterministic training; null keeps the model's
    )
    head_init_std: float = 0.0  # 0 = zero head, so training starts at p = 0.5
    linear_probe: bool = False  # freeze the backbone and train only the head
    lora: LoraSpec = field(default_factory=LoraSpec)  # low-rank adapters through peft
    gradient_checkpointing: bool = False  # recompute activations in backward: memory for compute
    fused_activations: bool = True  # gelu_new and kin as torch's one kernel of the same function (models/backbone.py)
    # null: the library's choice (sdpa); eager finetuned MiniLM 1.9x faster on a bf16 CPU (bench/README.md, "Attention")
    attn_implementation: str | None = None
    trust_remote_code: bool = False  # run code from the model repo; off unless a model file turns it on
    # torch.compile the backbone, for long runs: on a 2-core CPU compiling cost more than it saved
    # (bench/README.md, "torch.compile on a CPU"); results round differently, so they are cached apart
    compile: bool = False
    notes: str = ""  # memory and hardware notes for people choosing a model


@functools.cache
def model_schema() -> Any:
    return OmegaConf.structured(ModelSpec)  # built once: merge copies it, and every run loads ~35 files


def load_model_spec(path: Path) -> Any:
    """Validate one catalogue file against `ModelSpec`."""
    try:
        return OmegaConf.merge(model_schema(), OmegaConf.load(path))
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


def dir_name(text: str, limit: int = 200) -> str:
    """`text` as one folder name: any character but ASCII letters, digits and `._=,+-` becomes
    `_` (a `/` in an override value must not make subfolders), and a name over `limit`
    characters keeps its head and ends with a hash of the whole."""
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)
    if len(name) > limit:
        name = f"{name[: limit - 9]}_{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return name


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("pid"):
        # Keeps output folders distinct for jobs that start in the same microsecond.
        OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True)
    if not OmegaConf.has_resolver("dir_name"):
        # Sweep job folders are named by their overrides (conf/hydra/default.yaml).
        OmegaConf.register_new_resolver("dir_name", dir_name)
    if not OmegaConf.has_resolver("w2s.precision"):
        # The trainer presets' precision, chosen by what the hardware runs natively (precision.py).
        OmegaConf.register_new_resolver("w2s.precision", precision.resolve)


def share_config_store() -> None:
    """Hydra deep-copies its config repository, and with it the whole ConfigStore, for every
    composition: 40 ms with the catalogue's 54 typed nodes, and `--help` composes once per config
    group (over 5 s in all). Copying a singleton is never needed: the copy's sources are rebuilt
    on the live store at once, and `ConfigStore.load` copies each node it hands out (upstream
    fixed the same way in facebookresearch/hydra#2928)."""
    ConfigStore.__deepcopy__ = lambda self, memo: self


def setup() -> None:
    """Everything that must happen before Hydra composes a config (and so before torch loads)."""
    threads.sleep_when_idle()
    register_resolvers()
    register_model_catalogue()
    share_config_store()


def flat_config(cfg) -> dict:
    """The run's resolved config as dotted keys with JSON scalar values, so the report can tell
    runs apart by any knob."""
    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), child)
        else:
            flat[prefix] = json.dumps(value) if isinstance(value, list) else value

    walk(
        "",
        {
            k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in cfg
            if k not in NOT_RESULTS
        },
    )
    return flat


def model_entry(name: str, conf_dir: Path = CONF_DIR):
    """A catalogue entry by its option name (methods that train models beyond the two slots)."""
    path = conf_dir / "model" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (conf_dir / "model").glob("*.yaml"))
        raise ConfigError(f"no model '{name}' in the catalogue; fix: use one of {known}")
    return load_model_spec(path)
