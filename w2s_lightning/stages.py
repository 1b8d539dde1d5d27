"""What one stage does: finetune a classifier on soft targets, then predict probabilities on
the sets it is asked about. The pipeline decides which model, data and loss."""

from __future__ import annotations

import resource
import time
import warnings
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import OmegaConf

from w2s_lightning import distributed
from w2s_lightning.cache import StageCache, stage_key
from w2s_lightning.data.batches import FeatureExamples, encode, inference_loader, train_loader
from w2s_lightning.data.splits import fingerprint
from w2s_lightning.errors import TrainingDiverged
from w2s_lightning.losses import Loss
from w2s_lightning.models.backbone import load_config, load_tokenizer, random_weights
from w2s_lightning.models.classifier import Encoder, ProbeHead, resolve_pooling
from w2s_lightning.models.identity import source_fields
from w2s_lightning.models.system import ClassifierSystem, FeatureSystem, configure_deepspeed_clip
from w2s_lightning.progress import stage_callbacks
from w2s_lightning.threads import AUTO, LARGE, use_threads, work_of

# Lightning cannot see that our inference batch samplers yield every index; they do, by
# construction (run_predict checks it). Set once: `catch_warnings` around each prediction would
# swap the process's filters under a thread predicting beside it (prefetch.py).
warnings.filterwarnings("ignore", message="You are using a custom batch sampler")

# Catalogue fields that only the trained head reads. A frozen encoder's features are the same
# whatever they say, so the features' key holds every other field, and any field a future entry
# adds: a field wrongly left out would serve one model's features to another (a Pythia checkpoint
# the final model's, say), one wrongly kept in costs only a recomputation.
HEAD_ONLY_FIELDS = frozenset(
    {"name", "size", "lr", "batch_size", "micro_batch_size", "head_init_std", "linear_probe", "lora"}
    | {"gradient_checkpointing", "notes"}
)
# Trainer knobs that change how a run is watched, not what it computes.
RUNTIME_ONLY_TRAINER_KEYS = frozenset(
    {"enable_progress_bar", "enable_model_summary", "log_every_n_steps", "logger", "default_root_dir"}
    | {"enable_checkpointing", "callbacks"}
)


def trainer_key(cfg) -> dict:
    """The trainer settings in a stage's key: the device, precision and strategy decide a stage's
    kernels, and with them how its numbers round."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    return {k: v for k, v in trainer.items() if k not in RUNTIME_ONLY_TRAINER_KEYS}


def feature_key(cfg, spec, frame: pd.DataFrame, cache: StageCache | None = None) -> str:
    """The cache key of `spec`'s frozen features of `frame`'s texts under `cfg`'s trainer. The
    batch size is in it: a batch is padded to its longest text, and in reduced precision the
    padding's length changes how a text's features round."""
    model = {k: v for k, v in OmegaConf.to_container(spec, resolve=True).items() if k not in HEAD_ONLY_FIELDS}
    model.update(source_fields(spec, cache))
    # What the backbone reads: the texts and how they may be cut, not their ids or labels.
    digest = fingerprint(frame.drop(columns=["id", "label", "group"], errors="ignore"))
    return stage_key(
        "features",
        {
            "model": model,
            "texts": digest,
            "trainer": trainer_key(cfg),
            "seed": cfg.seed if random_weights(spec) else None,
        },
    )


def make_trainer(cfg, **kwargs) -> L.Trainer:
    """The configured Trainer. Its distributed sampler stays off: the pipeline's batch samplers
    give each rank its share of every batch themselves (data/batches.py), and Lightning's would
    split the dataset instead and undo the length grouping."""
    trainer = instantiate(cfg.trainer, use_distributed_sampler=False, **kwargs)
    configure_deepspeed_clip(trainer.strategy, cfg.train.grad_clip)
    wrap_classifier(trainer.strategy)
    return trainer


def wrap_classifier(strategy) -> None:
    """Under FSDP the classifier is a sharded unit of its own. A training step runs forward and
    backward (several times, with micro-batches) inside the one forward of the root module, and FSDP
    fails when the root itself holds weights, as it would the head and embeddings."""
    if not isinstance(strategy, FSDPStrategy):
        return
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    policy = strategy.kwargs.get("auto_wrap_policy")
    if policy is None or isinstance(policy, ModuleWrapPolicy):
        classes = set(policy._module_classes) if policy is not None else set()
        # By isinstance: a Classifier is an Encoder.
        strategy.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(classes | {Encoder, ProbeHead})


def sharded(trainer: L.Trainer) -> bool:
    """Strategies that shard weights, and so should build the model inside their own context
    (subclasses too: `trainer=fsdp_cpu` runs one)."""
    return isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy))


def run_predict(
    trainer: L.Trainer, system: L.LightningModule, examples, batch_size: int, pad_id: int, generator=None
) -> np.ndarray:
    """Predictions in dataset order (inference runs in length order). Under data parallelism each
    rank predicts its share and every rank receives all of them; each example must arrive exactly
    once, or the stage fails rather than keep a hole or a double. `generator`: where the loader
    draws its worker seed (inference_loader)."""
    batches = trainer.predict(system, inference_loader(examples, batch_size, pad_id, generator=generator))
    if trainer.received_sigterm:  # Lightning notes a SIGTERM during prediction and goes on
        raise SIGTERMException
    index = torch.cat([i for i, _ in batches])
    values = torch.cat([v.float() for _, v in batches])
    real = index >= 0  # stand-ins of ranks with no share of a batch carry ~i
    index, values = (distributed.gather(x[real].to(system.device)).cpu() for x in (index, values))
    counts = np.bincount(index.numpy(), minlength=len(examples))
    if len(index) != len(examples) or (counts != 1).any():
        raise RuntimeError(
            f"predictions gathered from {distributed.world_size()} processes cover {int((counts > 0).sum())} of "
            f"{len(examples)} examples with {len(index)} rows; every example must be predicted exactly once"
        )
    out = np.empty((len(examples), *values.shape[1:]), dtype=np.float32)
    out[index.numpy()] = values.numpy()
    return out


def peak_memory() -> dict:
    """Peak GPU memory allocated during the stage, or the process's peak resident memory so far."""
    if torch.cuda.is_available():
        return {"peak_gpu_bytes": torch.cuda.max_memory_allocated()}
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


class Inputs:
    """Turns texts into what the model trains on: token ids, or for a linear probe its frozen
    encoder's pooled features, computed once per (model, texts) and cached like a stage, so a
    sweep of probes never runs a backbone twice on the same data. The encoder (a FeatureSystem)
    and its trainer are built on the first feature missing from the cache: a stage whose features
    are all cached never loads the backbone. `callbacks`: that trainer's (default: the stage's
    progress display)."""

    def __init__(self, cfg, spec, slot: str, stage: str, cache: StageCache | None, workdir: Path, callbacks=None):
        self.cfg, self.spec, self.slot, self.stage = cfg, spec, slot, stage
        self.cache, self.workdir, self.callbacks = cache, workdir, callbacks
        self.tokenizer = load_tokenizer(spec)
        self.pad_id = self.tokenizer.pad_token_id
        self.keep_end = resolve_pooling(spec, load_config(spec)) == "last"  # decoders pool their last token
        self.truncated: dict[str, float] = {}  # share of each split's texts cut to fit max_length
        self.feature_entries: list = []  # cache entries of the frozen features computed or read

    @cached_property
    def trainer(self) -> L.Trainer:
        callbacks = stage_callbacks(self.cfg, self.stage) if self.callbacks is None else self.callbacks
        return make_trainer(self.cfg, logger=False, default_root_dir=str(self.workdir), callbacks=callbacks)

    @cached_property
    def system(self) -> FeatureSystem:
        if random_weights(self.spec):  # drawn as its stage draws them: the same seed, the same weights
            L.seed_everything(self.cfg.seed, workers=True)
        return FeatureSystem(self.spec, defer=sharded(self.trainer))

    def release(self) -> None:
        """Let the encoder go (it is built again if another feature is missing). Its trainer and it
        refer to each other, so without this the weights would wait for the garbage collector."""
        if (system := self.__dict__.pop("system", None)) is not None:
            system.model = None
        self.__dict__.pop("trainer", None)

    def encode(self, frame: pd.DataFrame, split: str, targets=None):
        """Token ids of `frame`'s texts, fitted to max_length. Training and validation targets are
        labels a cut could erase (data/batches.encode); predicted sets have none."""
        targets = np.zeros(len(frame)) if targets is None else targets
        labels = np.asarray(targets) > 0.5 if split in ("train", "val") else None
        where, knob = f"stage {self.stage}, split {split} ({self.spec.name})", f"{self.slot}.max_length"
        return encode(frame, self.tokenizer, self.spec.max_length, targets, self.keep_end, where, knob, labels)

    def __call__(self, frame: pd.DataFrame, targets, split: str):
        encoded = self.encode(frame, split, targets)
        self.truncated[split] = encoded.truncated_fraction
        if not self.spec.linear_probe:
            return encoded
        return FeatureExamples(self.features(frame, encoded), targets)

    def features(self, frame: pd.DataFrame, encoded) -> torch.Tensor:
        cache = self.cache or StageCache(self.workdir / "features", enabled=False)
        result = cache.run("features", self.feature_key(frame), self.feature_job(encoded))
        self.feature_entries.append(result)  # a method's cost and keys name the features it read
        return torch.load(result.path / "features.pt")

    def feature_key(self, frame: pd.DataFrame) -> str:
        return feature_key(self.cfg, self.spec, frame, self.cache)

    def feature_job(self, encoded) -> Callable[[Path], dict]:
        """The cache's `compute` for the features of `encoded`. The loader draws from a generator of
        its own, so features of a loaded backbone, computed, read from the cache or prefetched,
        leave the global generators as they were, and every later draw of the stage with them."""

        def compute(workdir: Path) -> dict:
            with use_threads(self.cfg.get("threads", AUTO), LARGE):  # a backbone over many texts splits well
                feats = run_predict(
                    self.trainer, self.system, encoded, self.spec.eval_batch_size, self.pad_id, torch.Generator()
                )
            if not np.isfinite(feats).all():
                raise TrainingDiverged(
                    f"stage {self.stage}: the frozen backbone of {self.spec.name} gave non-finite features for "
                    f"{int((~np.isfinite(feats).all(1)).sum())} texts; nothing is cached; fix: run it in float32 "
                    "(trainer.precision=32-true)"
                )
            torch.save(torch.from_numpy(feats), workdir / "features.pt")
            return {"model": self.spec.name, "n": len(encoded)}

        return compute


def fit_predict(
    cfg,
    spec,
    slot: str,
    stage: str,
    train: pd.DataFrame,
    targets: np.ndarray,
    loss: Loss,
    val: pd.DataFrame,
    val_targets: np.ndarray,
    predict: dict[str, pd.DataFrame],
    workdir: Path,
    loggers: list,
    cache: StageCache | None = None,
    epochs: int | None = None,
    select=None,
    callbacks=(),
) -> dict:
    """Train `spec` (the model of config slot `slot`) on (`train`, `targets`), validating on
    (`val`, `val_targets`), then write `<name>.parquet` (id, prob) for every frame in `predict`.
    `select` (a `methods.selection` strategy) may keep the best checkpoint by validation. The
    frames may lack a `label` column: a stage never needs ground truth it was not given.
    `callbacks` join every trainer of the stage (a linear probe's features have their own).
    Returns the stage record. A non-finite loss or prediction raises TrainingDiverged."""
    L.seed_everything(cfg.seed, workers=True)  # each stage starts from the same state, cached or not
    trainer = make_trainer(
        cfg,
        max_epochs=epochs or cfg.train.epochs,
        logger=loggers or False,
        default_root_dir=str(workdir),
        callbacks=stage_callbacks(cfg, stage) + (select.callbacks() if select else []) + list(callbacks),
        **(select.trainer_overrides(len(train), spec.batch_size) if select else {}),
    )
    system = ClassifierSystem(
        spec,
        loss,
        instantiate(cfg.optimizer),
        cfg.train.warmup_ratio,
        cfg.train.grad_clip,
        stage,
        slot,
        defer=sharded(trainer),
    )
    inputs = Inputs(cfg, spec, slot, stage, cache, workdir, stage_callbacks(cfg, stage) + list(callbacks))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train_examples = inputs(train, targets, "train")
    val_examples = inputs(val, val_targets, "val")
    start = time.perf_counter()
    threads, work = cfg.get("threads", AUTO), work_of(spec)
    with use_threads(threads, work) as fit_threads:
        trainer.fit(
            system,
            train_loader(train_examples, spec.batch_size, inputs.pad_id, cfg.seed, cfg.train.group_by_length),
            inference_loader(val_examples, spec.eval_batch_size, inputs.pad_id),
        )
    train_seconds = time.perf_counter() - start
    record = {
        "model": spec.name,
        "n_train": len(train),
        "train_seconds": train_seconds,
        "train_examples_per_s": (epochs or cfg.train.epochs) * len(train) / train_seconds,
        "val": {k.split("/")[-1]: float(v) for k, v in trainer.callback_metrics.items() if "/val/" in k},
        "threads": fit_threads,
    }
    if select:
        record["selected"] = select.restore(system)
    start = time.perf_counter()
    for name, frame in predict.items():
        examples = inputs(frame, np.zeros(len(frame)), name)
        with use_threads(threads, work):
            probs = run_predict(trainer, system, examples, spec.eval_batch_size, inputs.pad_id).astype(np.float64)
        if not np.isfinite(probs).all():
            raise TrainingDiverged(
                f"stage {stage}: {int((~np.isfinite(probs)).sum())} of {len(probs)} predictions on {name} are not "
                f"finite ({slot}.lr={spec.lr}); nothing of this stage is cached; fix: lower {slot}.lr"
            )
        pd.DataFrame({"id": frame["id"], "prob": probs}).to_parquet(workdir / f"{name}.parquet")
    record["predict_seconds"] = time.perf_counter() - start
    inputs.release()
    record["truncated"] = inputs.truncated
    record.update(peak_memory())
    if cfg.save_weights:
        torch.save(system.trainable_weights(), workdir / "weights.pt")
    return record
