"""The LightningModule that trains a classifier on soft targets. The weak supervisor and the
strong ceiling train on ground truth with `xent`; the strong student trains on weak labels
with the configured loss. Nothing here knows which slot a model fills."""

from __future__ import annotations

import math

import lightning as L
import torch
from omegaconf import OmegaConf

from w2s_lightning.errors import TrainingDiverged
from w2s_lightning.losses import Loss
from w2s_lightning.metrics import binary_metrics
from w2s_lightning.models.classifier import Classifier

MODEL_INPUTS = ("input_ids", "attention_mask", "features")


class ClassifierSystem(L.LightningModule):
    def __init__(
        self,
        spec,
        loss: Loss,
        optimizer,
        warmup_ratio: float = 0.0,
        grad_clip: float | None = 1.0,
        stage: str = "train",
        slot: str = "model",
    ):
        super().__init__()
        # Manual steps let one configured batch run as several micro-batches while a loss
        # such as logconf still sees statistics of the whole batch.
        self.automatic_optimization = False
        spec_dict = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec)
        self.save_hyperparameters({"spec": spec_dict, "warmup_ratio": warmup_ratio, "grad_clip": grad_clip})
        self.spec = OmegaConf.create(spec_dict)
        self.model = Classifier(self.spec)
        self.loss, self.optimizer_factory = loss, optimizer
        self.warmup_ratio, self.grad_clip, self.stage, self.slot = warmup_ratio, grad_clip, stage, slot
        self.micro_batch_size = self.spec.micro_batch_size or self.spec.batch_size
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.predict_features = False

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
        chunks, n, progress = self._chunks(batch), batch["target"].shape[0], self.progress()
        context = None
        if self.loss.needs_batch_context and len(chunks) > 1:
            with torch.no_grad():
                probs = torch.cat([self(c).float().softmax(-1)[:, 1] for c in chunks])
            context = self.loss.batch_context(probs, batch["target"])
        total = 0.0
        for chunk in chunks:
            logits = self(chunk)
            loss = self.loss(logits, chunk["target"], progress, context) * (chunk["target"].shape[0] / n)
            self.manual_backward(loss)
            total += loss.detach()
        self.check_finite(total, scheduler.get_last_lr()[0])
        if self.grad_clip:
            self.clip_norm(optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        self.log(f"{self.stage}/train/loss", total, prog_bar=True, batch_size=n)
        self.log(f"{self.stage}/train/lr", scheduler.get_last_lr()[0], batch_size=n)
        return total

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
        """Sharded parameters need the wrapper's own clip, which sums the norm across ranks."""
        wrapped = self.trainer.strategy.model
        if hasattr(wrapped, "clip_grad_norm_"):  # FSDP
            wrapped.clip_grad_norm_(self.grad_clip)
        else:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch)
        self._val_outputs.append((logits.float().softmax(-1)[:, 1].cpu(), batch["target"].cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        probs, targets = (torch.cat(x) for x in zip(*self._val_outputs))
        self._val_outputs.clear()
        metrics = binary_metrics(probs.numpy(), (targets > 0.5).long().numpy())
        self.log_dict({f"{self.stage}/val/{k}": v for k, v in metrics.items()})

    def predict_step(self, batch: dict, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """p(label = 1) per example, or with `predict_features` the pooled features."""
        if self.predict_features:
            return batch["index"], self.model.pooled(batch["input_ids"], batch["attention_mask"]).float()
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
