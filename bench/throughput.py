"""Training throughput of the strong-student stage two ways on the same batches: through
w2s-lightning (a `lightning.Trainer` fitting `ClassifierSystem`, built as `stages.fit_predict`
builds it) and through a bare PyTorch loop doing the same arithmetic. Their ratio is the
framework's overhead."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bench.common import Clock, make_trainer, spread, synchronize, torch_device
from bench.flops import SAMPLE_STEPS, autocast_for_precision, counted_flops
from w2s_lightning.data.batches import EncodedExamples, encode, train_loader
from w2s_lightning.data.splits import Splits, make_splits
from w2s_lightning.models.backbone import load_config, load_tokenizer
from w2s_lightning.models.classifier import Classifier, resolve_pooling
from w2s_lightning.models.system import MODEL_INPUTS, ClassifierSystem


@dataclass
class Workload:
    """The student's training data and step budget, shared by both loops."""

    cfg: DictConfig
    examples: EncodedExamples
    pad_id: int
    warmup: int
    timed: int
    group_by_length: bool | None = None  # None: the config's train.group_by_length

    @property
    def spec(self) -> DictConfig:
        return self.cfg.strong_model

    @property
    def total(self) -> int:
        return self.warmup + self.timed

    @property
    def device(self) -> torch.device:
        return torch_device(self.cfg)

    def loader(self):
        cfg = self.cfg
        grouped = cfg.train.group_by_length if self.group_by_length is None else self.group_by_length
        return train_loader(self.examples, self.spec.batch_size, self.pad_id, cfg.seed, grouped)

    def epochs(self) -> int:
        return math.ceil(self.total / len(self.loader()))

    def batches(self, loader):
        """The first `total` batches over as many epochs as that takes, as Lightning draws them."""
        step = 0
        for _ in range(self.epochs()):
            for batch in loader:
                if step == self.total:
                    return
                yield batch
                step += 1


def encode_split(cfg: DictConfig, frame, where: str) -> tuple[EncodedExamples, int]:
    """A split as the strong model reads it, its true labels as targets, and the pad id."""
    spec = cfg.strong_model
    tokenizer = load_tokenizer(spec)
    keep_end = resolve_pooling(spec, load_config(spec)) == "last"
    examples = encode(frame, tokenizer, spec.max_length, frame["label"].to_numpy(float), keep_end, where)
    return examples, tokenizer.pad_token_id


def build_workload(cfg: DictConfig, warmup: int, timed: int, splits: Splits | None = None) -> Workload:
    """Split B with its true labels standing in for weak labels: speed does not depend on
    the target values, and the weak stage need not run first."""
    if splits is None:
        splits = make_splits(instantiate(cfg.dataset.loader), cfg.dataset, cfg.seed)
    examples, pad_id = encode_split(cfg, splits.b, "student/train")
    return Workload(cfg, examples, pad_id, warmup, timed)


def planned_batches(work: Workload) -> list[dict]:
    """Per step: which examples, and how many real and padded tokens (counted here, on the
    CPU, so neither timed loop pays for counting)."""
    plan = []
    for batch in work.batches(work.loader()):
        mask = batch["attention_mask"]
        plan.append(
            {
                "index": tuple(batch["index"].tolist()),
                "examples": mask.shape[0],
                "real_tokens": int(mask.sum()),
                "padded_tokens": mask.numel(),
            }
        )
    return plan


@dataclass
class Run:
    seconds: float  # the timed steps, wall clock
    cpu_seconds: float  # the timed steps, process CPU time
    order: list[tuple[int, ...]]  # the examples of every step, to check both loops saw the same batches
    model: torch.nn.Module
    threads: int
    precision: str = "32-true"
    fit_seconds: float = 0.0  # the whole fit call: set-up, every step, teardown
    fit_cpu_seconds: float = 0.0


class StepClock(L.Callback):
    """Times from the start of the first step after warmup to the end of the last step."""

    def __init__(self, work: Workload):
        self.work, self.step = work, 0
        self.clock, self.seconds, self.cpu_seconds = Clock(), 0.0, 0.0
        self.indices: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.indices.append(batch["index"])  # kept as a tensor: reading it now would sync the GPU
        if self.step == self.work.warmup:
            synchronize(self.work.device)
            self.clock.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.step += 1
        if self.step == self.work.total:
            synchronize(self.work.device)
            self.seconds, self.cpu_seconds = self.clock.read()


def framework_trainer(work: Workload, callbacks: list, root: str) -> L.Trainer:
    # max_steps also sets the lr schedule's length (estimated_stepping_batches), which the bare
    # loop matches below.
    return make_trainer(
        work.cfg,
        max_epochs=work.epochs(),
        max_steps=work.total,
        logger=False,
        enable_progress_bar=False,  # a bar would cost time inside the timed window
        default_root_dir=root,
        callbacks=callbacks,
        enable_checkpointing=False,
    )


def trainer_precision(work: Workload) -> str:
    """The precision Lightning resolves the config's `trainer.precision` to (e.g. "bf16-mixed")."""
    with tempfile.TemporaryDirectory() as tmp:
        return str(framework_trainer(work, [], tmp).precision)


def run_framework(work: Workload) -> Run:
    cfg = work.cfg
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    loss, optimizer = instantiate(cfg.loss), instantiate(cfg.optimizer)
    system = ClassifierSystem(work.spec, loss, optimizer, cfg.train.warmup_ratio, cfg.train.grad_clip, "student")
    clock = StepClock(work)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = framework_trainer(work, [clock], str(Path(tmp)))
        fit = Clock().start()
        trainer.fit(system, work.loader())
        synchronize(work.device)
        fit_seconds, fit_cpu = fit.read()
    order = [tuple(i.tolist()) for i in clock.indices]
    return Run(
        clock.seconds,
        clock.cpu_seconds,
        order,
        system.model,
        torch.get_num_threads(),
        str(trainer.precision),
        fit_seconds,
        fit_cpu,
    )


def cosine_schedule(total: int, warmup_ratio: float):
    """The lr multiplier of `ClassifierSystem.configure_optimizers`: linear warmup, cosine to zero."""
    warmup = int(warmup_ratio * total)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return schedule


class BareStep:
    """One optimizer step as `ClassifierSystem.training_step` takes it: micro-batches with
    the loss's whole-batch context, norm clipping, AdamW, a per-step lr schedule, and the
    autocast of the precision Lightning resolved for the framework."""

    def __init__(self, work: Workload, precision: str):
        cfg = work.cfg
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        self.spec = OmegaConf.create(OmegaConf.to_container(work.spec, resolve=True))
        self.model = Classifier(self.spec).to(work.device).train()
        self.loss = instantiate(cfg.loss)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = instantiate(cfg.optimizer)(self.params, lr=self.spec.lr)
        schedule = cosine_schedule(work.total, cfg.train.warmup_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.micro = self.spec.micro_batch_size or self.spec.batch_size
        self.grad_clip, self.total, self.done = cfg.train.grad_clip, work.total, 0
        self.autocast = lambda: autocast_for_precision(precision, work.device)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})

    def __call__(self, batch: dict) -> torch.Tensor:
        n = batch["target"].shape[0]
        chunks = [{k: v[i : i + self.micro] for k, v in batch.items()} for i in range(0, n, self.micro)]
        progress, context, total = min(1.0, self.done / self.total), None, 0.0
        with self.autocast():
            if self.loss.needs_batch_context and len(chunks) > 1:
                with torch.no_grad():
                    probs = torch.cat([self.forward(c).float().softmax(-1)[:, 1] for c in chunks])
                context = self.loss.batch_context(probs, batch["target"])
            for chunk in chunks:
                logits = self.forward(chunk)
                loss = self.loss(logits, chunk["target"], progress, context) * (chunk["target"].shape[0] / n)
                loss.backward()
                total += loss.detach()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.done += 1
        return total


def run_bare(work: Workload, precision: str) -> Run:
    fit = Clock().start()
    step, device = BareStep(work, precision), work.device
    order, clock = [], Clock()
    for i, batch in enumerate(work.batches(work.loader())):
        if i == work.warmup:
            synchronize(device)
            clock.start()
        order.append(tuple(batch["index"].tolist()))
        step({k: v.to(device, non_blocking=True) for k, v in batch.items()})
    synchronize(device)
    seconds, cpu = clock.read()
    fit_seconds, fit_cpu = fit.read()
    return Run(seconds, cpu, order, step.model, torch.get_num_threads(), precision, fit_seconds, fit_cpu)


def max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Both loops start from the same seed and do the same arithmetic, so their weights after
    training should agree (exactly, or to float rounding)."""
    pairs = zip(a.state_dict().values(), b.state_dict().values())
    return max(float((x.detach().float().cpu() - y.detach().float().cpu()).abs().max()) for x, y in pairs)


def count_parameters(model: torch.nn.Module) -> dict:
    embedding = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "embedding": embedding,
    }


def rates(seconds: list[float], cpu_seconds: list[float], counts: dict) -> dict:
    """Throughput per wall-clock second and per CPU second (the process's user + system time)."""
    result = {"seconds": spread(seconds), "cpu_seconds": spread(cpu_seconds)}
    for key in ("examples", "real_tokens", "padded_tokens"):
        if key in counts:
            result[f"{key}_per_s"] = spread([counts[key] / s for s in seconds])
            result[f"{key}_per_cpu_s"] = spread([counts[key] / s for s in cpu_seconds])
    return result


def sampled_batches(work: Workload, start: int, count: int) -> list[dict]:
    return [batch for i, batch in enumerate(work.batches(work.loader())) if start <= i < start + count]


def measure_overhead(cfg: DictConfig, warmup: int, timed: int, repeats: int) -> dict:
    if cfg.strong_model.linear_probe:
        # A probe trains a head on cached features: its steps are microseconds of arithmetic, and
        # its stage's cost is the backbone's feature extraction, which the probe section times.
        return {"model": cfg.strong_model.name, "skipped": "linear probes train on cached features, not tokens"}
    work = build_workload(cfg, warmup, timed)
    plan = planned_batches(work)
    precision = trainer_precision(work)
    counts = {key: sum(step[key] for step in plan[warmup:]) for key in ("examples", "real_tokens", "padded_tokens")}
    seconds = {"framework": [], "bare": []}
    cpu = {"framework": [], "bare": []}
    fit = {"framework": [], "bare": []}
    same_batches, diffs, threads = True, [], set()
    for r in range(repeats):
        # Alternating which loop goes first spreads slow drifts of a shared machine over both.
        names = ("framework", "bare") if r % 2 == 0 else ("bare", "framework")
        runs = {name: run_framework(work) if name == "framework" else run_bare(work, precision) for name in names}
        for name, run in runs.items():
            seconds[name].append(run.seconds)
            cpu[name].append(run.cpu_seconds)
            fit[name].append(run.fit_seconds)
            same_batches &= run.order == [step["index"] for step in plan]
            threads.add(run.threads)
        diffs.append(max_param_diff(runs["framework"].model, runs["bare"].model))
    spec = work.spec
    micro = spec.micro_batch_size or spec.batch_size
    flops = counted_flops(runs["bare"].model, sampled_batches(work, warmup, SAMPLE_STEPS), micro, precision)
    # Scaled by the padded grid: FLOPs follow the computed positions, padding included.
    flops["timed_window"] = flops["flops_per_padded_token"] * counts["padded_tokens"]
    return {
        "model": spec.name,
        "loss": cfg.loss._target_.rsplit(".", 1)[-1],
        "precision": runs["framework"].precision,
        "configured_precision": str(cfg.trainer.precision),
        "device": str(work.device),
        "batch_size": spec.batch_size,
        "micro_batch_size": micro,
        "max_length": spec.max_length,
        "train_examples": len(work.examples),
        "warmup_steps": warmup,
        "timed_steps": timed,
        "repeats": repeats,
        "torch_threads": sorted(threads),
        "parameters": count_parameters(runs["bare"].model),
        "timed_counts": counts,
        "flops": flops,
        "framework": {**rates(seconds["framework"], cpu["framework"], counts), "fit_seconds": spread(fit["framework"])},
        "bare": {**rates(seconds["bare"], cpu["bare"], counts), "fit_seconds": spread(fit["bare"])},
        # Throughput of the framework over the bare loop: 1.0 is no overhead, 0.95 is 5% slower.
        "ratio_framework_over_bare": spread([b / f for f, b in zip(seconds["framework"], seconds["bare"])]),
        # The same in CPU time, which other people's load on a shared machine moves far less.
        "ratio_framework_over_bare_cpu": spread([b / f for f, b in zip(cpu["framework"], cpu["bare"])]),
        "same_batches": same_batches,
        "max_param_diff": max(diffs),
    }
