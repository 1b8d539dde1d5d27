"""The model catalogue and the multi-GPU trainer presets, checked without downloads: every
entry validates, the ladders are ordered, the LoRA targets name modules that exist in each
family's architecture, and the sharded presets compose and build their strategies."""

from __future__ import annotations

import functools
import inspect
import re
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from torch import nn

from w2s_lightning import config
from w2s_lightning.config import load_model_spec

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
MODEL_FILES = sorted((CONF_DIR / "model").glob("*.yaml"))

# Each family's ladder, smallest first. A new size must be added here, so its place is checked.
LADDERS = {
    "gpt2": ["gpt2", "gpt2_medium", "gpt2_large", "gpt2_xl"],
    "pythia": [
        "pythia_70m",
        "pythia_160m",
        "pythia_410m",
        "pythia_1b",
        "pythia_1_4b",
        "pythia_2_8b",
        "pythia_6_9b",
        "pythia_12b",
    ],
    "qwen2_5": [
        "qwen2_5_0_5b",
        "qwen2_5_1_5b",
        "qwen2_5_3b",
        "qwen2_5_7b",
        "qwen2_5_14b",
        "qwen2_5_32b",
        "qwen2_5_72b",
    ],
    "llama3": ["llama3_8b", "llama3_70b"],
}
FAMILY = {name: family for family, names in LADDERS.items() for name in names}
HUB_OWNER = {"pythia": "EleutherAI", "qwen2_5": "Qwen", "llama3": "meta-llama"}
# The hub still serves GPT-2 under its original owner-less ids (now openai-community/...).
LEGACY_HUB_IDS = {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"}
NOT_HUB = ("pkg://", "model_type:")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
SIZE = re.compile(r"(\d+(?:_\d+)?)([mb])")


def spec_of(name: str):
    return load_model_spec(CONF_DIR / "model" / f"{name}.yaml")


def nominal_size(name: str) -> float:
    """`pythia_1_4b` -> 1.4e9: the part after the family prefix, `_` as the decimal point."""
    match = SIZE.fullmatch(name.removeprefix(f"{FAMILY[name]}_"))
    assert match, f"{name} carries no size after its family prefix"
    return float(match.group(1).replace("_", ".")) * {"m": 1e6, "b": 1e9}[match.group(2)]


@functools.cache
def tiny_backbone(family: str) -> nn.Module:
    """A one-block random model of the family's architecture, built from a config alone."""
    from transformers import AutoModel, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    sizes = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=128)
    configs = {
        "gpt2": lambda: GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64, vocab_size=128),
        "pythia": lambda: GPTNeoXConfig(**sizes, max_position_embeddings=64),
        "qwen2_5": lambda: Qwen2Config(**sizes, num_key_value_heads=1),
        "llama3": lambda: LlamaConfig(**sizes, num_key_value_heads=1),
    }
    return AutoModel.from_config(configs[family]())


def block_class(model: nn.Module) -> type:
    """The repeated transformer block: the element type of the model's first ModuleList."""
    blocks = next(m for m in model.modules() if isinstance(m, nn.ModuleList))
    return type(blocks[0])


@functools.cache
def composed(trainer: str):
    config.setup()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"trainer={trainer}"])


def binds(target: str, node) -> None:
    """Every key of a `_target_` node is a parameter of the target: catches typos without
    building the object (which may need hardware or packages absent here)."""
    kwargs = {k: v for k, v in OmegaConf.to_container(node).items() if not k.startswith("_")}
    inspect.signature(get_class(target)).bind(**kwargs)


# --- every catalogue file ------------------------------------------------------------------


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_entry_validates_and_is_named_for_its_file(path):
    spec = load_model_spec(path)
    assert spec.name == path.stem, "the option name is the file name"
    assert "/" not in spec.name, "a slash would make Hydra read the name as a group path"
    assert spec.size > 0
    if spec.micro_batch_size is not None:
        assert spec.batch_size % spec.micro_batch_size == 0, "micro-batches must tile the batch"


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_hub_entries_name_a_namespaced_hub_id(path):
    spec = load_model_spec(path)
    if spec.pretrained.startswith(NOT_HUB) or spec.pretrained in LEGACY_HUB_IDS:
        return
    assert HUB_ID.fullmatch(spec.pretrained), f"{spec.pretrained!r} is not an owner/name hub id"


def test_every_family_file_is_on_its_ladder():
    prefixes = tuple(f"{family}_" for family in LADDERS)
    stems = {p.stem for p in MODEL_FILES}
    off_ladder = {s for s in stems if s.startswith(prefixes) and s not in FAMILY}
    assert not off_ladder, f"add {sorted(off_ladder)} to LADDERS"
    assert stems >= set(FAMILY), f"missing files: {sorted(set(FAMILY) - stems)}"


@pytest.mark.parametrize("family", LADDERS)
def test_ladder_is_ordered_by_size(family):
    sizes = [spec_of(name).size for name in LADDERS[family]]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), dict(zip(LADDERS[family], sizes))


@pytest.mark.parametrize("name", [n for n in FAMILY if FAMILY[n] in HUB_OWNER])
def test_hub_id_and_size_agree_with_the_name(name):
    spec = spec_of(name)
    owner, repo = spec.pretrained.split("/")
    assert owner == HUB_OWNER[FAMILY[name]]
    assert re.sub(r"[-.]", "_", repo.lower()).replace("meta_llama_3", "llama3") == name
    # Published names round the count; more than 15% off means a typo in `size`.
    assert spec.size == pytest.approx(nominal_size(name), rel=0.15)


@pytest.mark.parametrize("name", [n for n in FAMILY if FAMILY[n] in HUB_OWNER])
def test_precision_and_memory_knobs_follow_the_size(name):
    spec = spec_of(name)
    # Full finetuning keeps float32 masters under bf16-mixed; a LoRA base is frozen, so bf16 will do.
    assert spec.config_overrides["dtype"] == ("bfloat16" if spec.lora.enabled else "float32")
    # Full finetuning with Adam needs ~16 bytes/parameter: beyond 80 GB from ~5B on.
    assert spec.lora.enabled == (spec.size * 16 > 80e9)
    assert spec.gradient_checkpointing == (spec.size >= 1e9)
    assert spec.pooling == "last"
    assert spec.max_length == 1024


# --- LoRA targets against the real architectures -------------------------------------------


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_lora_targets_are_the_linear_layers_of_a_block(path):
    spec = load_model_spec(path)
    targets = list(spec.lora.target_modules)
    if targets == ["all-linear"]:
        return  # peft resolves it for any architecture
    assert spec.name in FAMILY, f"{spec.name} names LoRA targets but has no family to check them against"
    model = tiny_backbone(FAMILY[spec.name])
    block = next(m for m in model.modules() if isinstance(m, block_class(model)))
    linears = {name.rsplit(".", 1)[-1] for name, m in block.named_modules() if isinstance(m, nn.Linear)}
    assert set(targets) == linears, f"targets {sorted(targets)} vs the block's linear layers {sorted(linears)}"


@pytest.mark.parametrize("family", ["pythia", "qwen2_5", "llama3"])
def test_peft_adapts_every_target(family):
    """Through the project's own LoRA path: peft matches names by suffix, so check it really
    attached an adapter to every target."""
    from peft.tuners.lora import LoraLayer

    from w2s_lightning.models.classifier import apply_lora

    spec = spec_of(LADDERS[family][0])
    # A fresh copy: peft edits the model in place, and the cached one serves other tests.
    model = apply_lora(type(tiny_backbone(family))(tiny_backbone(family).config), spec.lora)
    adapted = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert adapted == set(spec.lora.target_modules)


# --- multi-GPU trainer presets -------------------------------------------------------------


@pytest.mark.parametrize("preset", ["fsdp", "deepspeed"])
def test_preset_builds_on_gpu_and_binds_to_lightning(preset):
    gpu, cfg = composed("gpu").trainer, composed(preset).trainer
    for key in gpu:
        if key not in ("devices",):
            assert cfg[key] == gpu[key], f"{preset} changes {key}: presets should only add sharding"
    assert cfg.devices > 1
    assert cfg.precision == "bf16-mixed"
    binds(cfg._target_, cfg)
    binds(cfg.strategy._target_, cfg.strategy)


def test_fsdp_strategy_instantiates_and_wraps_each_family_block():
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy

    # `_partial_` builds every nested node, the strategy included, but not the Trainer itself,
    # which would want the GPUs.
    trainer = instantiate(composed("fsdp").trainer, _partial_=True)
    assert trainer.func is L.Trainer
    strategy = trainer.keywords["strategy"]
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert strategy._activation_checkpointing_kwargs == {}
    wrapped = strategy.kwargs["auto_wrap_policy"]._module_classes
    for family in LADDERS:
        assert block_class(tiny_backbone(family)) in wrapped, f"{family}'s blocks would not be wrapped"


def test_deepspeed_strategy_instantiates():
    pytest.importorskip("deepspeed")
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = instantiate(composed("deepspeed").trainer.strategy)
    assert isinstance(strategy, DeepSpeedStrategy)
    assert strategy.config["zero_optimization"]["stage"] == 3
