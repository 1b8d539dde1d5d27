"""The LightningModule that trains a classifier on soft targets. The weak supervisor and the
strong ceiling train on ground truth with `xent`; the strong student trains on weak labels
with the configured loss. Nothing here knows which slot a model fills."""

from __future__ import annotations

import math
from contextlib import nullcontext

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from omegaconf import OmegaConf

from w2s_lightning import distributed
from w2s_lightning.errors import ConfigError, TrainingDiverged
from w2s_lightning.losses import Loss
from w2s_lightning.metrics import binary_metrics
from w2s_lightning.models.classifier import Classifier, Encoder, ProbeHead

MODEL_INPUTS = ("input_ids", "attention_mask", "features")


class ClassifierSystem(L.LightningModule):
    predict_features = False  # its passes predict probabilities; FeatureSystem's compute features

    def __init__(
        self,
        spec,
        loss: Loss,
        optimizer,
        warmup_ratio: float = 0.0,
        grad_clip: float | None = 1.0,
        stage: str = "train",
        slot: str = "model",
        defer: bool = False,
    ):
        super().__init__()
        # Manual steps let one configured batch run as several micro-batches while a loss
        # such as logconf still sees statistics of the whole batch.
        self.automatic_optimization = False
        spec_dict = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec)
        self.save_hyperparameters({"spec": spec_dict, "warmup_ratio": warmup_ratio, "grad_clip": grad_clip})
        self.spec = OmegaConf.create(spec_dict)
        # `defer`: built in configure_model, inside the strategy's context (DeepSpeed stage 3
        # partitions each weight as it is created). Otherwise here, right after the stage seeds the
        # generators, so a run draws the same initial weights whatever happens before fit.
        self.model = None if defer else self.build()
        self.loss, self.optimizer_factory = loss, optimizer
        self.warmup_ratio, self.grad_clip, self.stage, self.slot = warmup_ratio, grad_clip, stage, slot
        self.micro_batch_size = self.spec.micro_batch_size or self.spec.batch_size
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def build(self) -> Classifier | ProbeHead:
        """A linear probe trains its head on features computed before (FeatureSystem); anything
        else trains its whole classifier on token ids."""
        return ProbeHead(self.spec) if self.spec.linear_probe else Classifier(self.spec)

    def configure_model(self) -> None:
        if self.model is None:  # Lightning calls this again for predict after fit
            self.model = self.build()

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})

    def progress(self) -> float:
        total = max(1, self.trainer.estimated_stepping_batches)
        return min(1.0, self.global_step / total)

    def _chunks(self, batch: dict) -> list[dict]:
        n = batch["target"].shape[0]
        return [
            {k: v[i : i + self.micro_batch_size] for k, v in batch.items()} for i in range(0, n, self.micro_batch_size)
        ]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        chunks, progress = self._chunks(batch), self.progress()
        # Under data parallelism this is one rank's share of the batch. Each chunk's mean loss is
        # weighted by its share of the whole batch (every rank's examples; a stand-in weighs
        # nothing) times the world size, because DDP averages the ranks' gradients: the update is
        # then the one a single process would make on the whole batch.
        world = distributed.world_size()
        real = batch["index"] >= 0
        n = int(distributed.gather(real.sum().reshape(1)).sum())
        context = None
        if self.loss.needs_batch_context and (len(chunks) > 1 or world > 1):
            with torch.no_grad():
                probs = torch.cat([self(c).float().softmax(-1)[:, 1] for c in chunks])
            # The statistic of the whole batch, as one process would compute it.
            context = self.loss.batch_context(
                distributed.gather(probs[real]), distributed.gather(batch["target"][real])
            )
        total = 0.0
        for i, chunk in enumerate(chunks):
            weight = int((chunk["index"] >= 0).sum()) * world / n
            # Gradients are summed across ranks once per step, at the last chunk's backward.
            with self.no_sync() if i < len(chunks) - 1 else nullcontext():
                loss = self.loss(self(chunk), chunk["target"], progress, context) * weight
                self.manual_backward(loss)
            total += loss.detach() / world
        total = distributed.gather(total.reshape(1)).sum()
        self.check_finite(total, scheduler.get_last_lr()[0])
        if self.grad_clip:
            self.clip_norm(optimizer)
        optimizer.step()
        # Under FSDP (use_orig_params) dropping the parameters' gradients leaves their sharded
        # buffer, into which the next step accumulates: zero them in place there instead.
        optimizer.zero_grad(set_to_none=not isinstance(self.trainer.strategy, FSDPStrategy))
        scheduler.step()
        self.log(f"{self.stage}/train/loss", total, prog_bar=True, batch_size=n)  # the whole batch's loss
        self.log(f"{self.stage}/train/lr", scheduler.get_last_lr()[0], batch_size=n)
        return total

    def trainable_weights(self) -> dict[str, torch.Tensor]:
        """What training changed (Classifier.trainable_state_dict), whole: under FSDP gathered from
        every rank's shard, so every rank must call it."""
        root = self.sharded_root()
        if root is None:
            return self.model.trainable_state_dict()
        wrapper = "_fsdp_wrapped_module."  # the names one process would give
        names = {n.replace(wrapper, "") for n, p in self.model.named_parameters() if p.requires_grad}
        with whole_state(root):
            weights = root.state_dict()
        return {n: weights[f"model.{n}"].detach().cpu() for n in names}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """The inverse of trainable_weights (every rank must call it under FSDP)."""
        root = self.sharded_root()
        if root is None:
            self.model.load_state_dict(weights, strict=False)
            return
        with whole_state(root):
            root.load_state_dict({f"model.{n}": t for n, t in weights.items()}, strict=False)

    def sharded_root(self):
        """The FSDP module wrapping this system, or None."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        return strategy.model if isinstance(strategy, FSDPStrategy) else None

    def no_sync(self):
        """DDP's context that holds back the gradient all-reduce. FSDP cannot enter its own inside
        the forward that runs this step; it reduces at every backward, which sums the same."""
        if isinstance(self.trainer.strategy, DDPStrategy):
            return self.trainer.strategy.block_backward_sync()
        return nullcontext()

    def check_finite(self, loss: torch.Tensor, lr: float) -> None:
        """A non-finite loss ends the stage: every later number of it would be noise (a NaN
        model predicts one class, which scores as the class share and can even yield PGR 1)."""
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"stage {self.stage}: the training loss of {self.spec.name} is {loss.item()} at step "
                f"{self.global_step} (learning rate {lr:.3g}, {self.slot}.lr={self.spec.lr}); nothing of this "
                f"stage is cached or reported; fix: lower {self.slot}.lr (and keep train.grad_clip on)"
            )

    def clip_norm(self, optimizer) -> None:
        strategy = self.trainer.strategy
        if is_deepspeed(strategy):  # its engine clips inside step (configure_deepspeed_clip)
            return
        if isinstance(strategy, FSDPStrategy):
            clip_sharded(strategy.model, self.grad_clip)
        elif getattr(self.trainer.precision_plugin, "scaler", None) is None:
            # No loss scaling (float32, bf16): the gradients are the true ones, so clip them here.
            # Lightning's own clip refuses fused optimizers under any mixed precision, scaler or not.
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        elif optimizer.defaults.get("fused"):
            raise ConfigError(
                "a fused optimizer unscales fp16 gradients inside its step, after they must be clipped; fix: "
                "optimizer.fused=false with trainer.precision=16-mixed (or use bf16-mixed, which needs no scaler)"
            )
        else:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        real = batch["index"] >= 0
        probs = self(batch).float().softmax(-1)[:, 1]
        self._val_outputs.append((probs[real], batch["target"][real]))

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        # Every rank scores the whole validation set, so checkpoint selection agrees across ranks.
        probs, targets = (distributed.gather(torch.cat(x)).cpu() for x in zip(*self._val_outputs))
        self._val_outputs.clear()
        metrics = binary_metrics(probs.numpy(), (targets > 0.5).long().numpy())
        self.log_dict({f"{self.stage}/val/{k}": v for k, v in metrics.items()})

    def predict_step(self, batch: dict, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """p(label = 1) per example."""
        return batch["index"], self(batch).float().softmax(-1)[:, 1]

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params, lr=self.spec.lr)
        total = max(1, self.trainer.estimated_stepping_batches)
        warmup = int(self.warmup_ratio * total)

        def schedule(step: int) -> float:
            # Linear warmup, then cosine decay to zero at the last step.
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class FeatureSystem(L.LightningModule):
    """A frozen encoder that predicts each text's pooled features: a linear probe's inputs, which
    its stage's `ProbeHead` trains on. It holds no head, so building it draws nothing from the
    random generators when the backbone's weights are loaded, and it may be built while another
    stage trains (`w2s_lightning/prefetch.py`)."""

    predict_features = True  # the console names its passes "features"

    def __init__(self, spec, defer: bool = False):
        super().__init__()
        self.spec = spec
        self.model = None if defer else self.build()  # `defer`: as ClassifierSystem's

    def build(self) -> Encoder:
        return Encoder(self.spec).requires_grad_(False)

    def configure_model(self) -> None:
        if self.model is None:
            self.model = self.build()

    def predict_step(self, batch: dict, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["index"], self.model.pooled(batch["input_ids"], batch["attention_mask"]).float()


def is_deepspeed(strategy) -> bool:
    return type(strategy).__name__ == "DeepSpeedStrategy"


def configure_deepspeed_clip(strategy, grad_clip: float | None) -> None:
    """DeepSpeed clips in its engine, from its config's `gradient_clipping`, which Lightning fills from
    Trainer.gradient_clip_val; manual optimization forbids that setting, so the clip goes in here,
    before the engine starts. A `gradient_clipping` the user wrote into strategy.config stays."""
    if is_deepspeed(strategy) and grad_clip:
        strategy.config.setdefault("gradient_clipping", float(grad_clip))


def clip_sharded(model: torch.nn.Module, max_norm: float) -> None:
    """Clip by the norm of the whole gradient when each rank holds a disjoint shard of it (FSDP's
    FULL_SHARD and SHARD_GRAD_OP): the squared norms of the shards sum across ranks. FSDP's own
    clip_grad_norm_ does this too, but only outside the root module's forward, and a training step
    runs inside it."""
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

    units = [m for m in model.modules() if isinstance(m, FullyShardedDataParallel)]
    replicated = {u.sharding_strategy for u in units} - {ShardingStrategy.FULL_SHARD, ShardingStrategy.SHARD_GRAD_OP}
    if replicated:
        raise ConfigError(
            f"train.grad_clip under FSDP needs sharded gradients, not {sorted(s.name for s in replicated)}; fix: "
            "trainer.strategy.sharding_strategy=FULL_SHARD, or train.grad_clip=null"
        )
    grads = [p.grad for p in model.parameters() if p.grad is not None and p.grad.numel()]
    zero = torch.zeros((), device=next(model.parameters()).device)  # a rank may hold no gradient at all
    squared = sum((g.detach().float().pow(2).sum() for g in grads), zero)
    total = distributed.gather(squared.reshape(1)).sum().sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype))


def whole_state(root):
    """FSDP's context in which state dicts hold whole tensors on every rank."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    on_gpu = next(root.parameters()).device.type == "cuda"  # offloading CPU tensors to the CPU crashes
    whole = FullStateDictConfig(offload_to_cpu=on_gpu, rank0_only=False)
    return FSDP.state_dict_type(root, StateDictType.FULL_STATE_DICT, whole)
