"""What one stage does: finetune a classifier on soft targets, then predict probabilities on
the sets it is asked about. The pipeline decides which model, data and loss."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate

from w2s_lightning.data.batches import encode, inference_loader, train_loader
from w2s_lightning.losses import Loss
from w2s_lightning.metrics import binary_metrics
from w2s_lightning.models.backbone import load_tokenizer
from w2s_lightning.models.system import ClassifierSystem


def predict_probs(trainer: L.Trainer, system: ClassifierSystem, examples, batch_size: int, pad_id: int) -> np.ndarray:
    batches = trainer.predict(system, inference_loader(examples, batch_size, pad_id))
    probs = np.empty(len(examples), dtype=np.float64)
    for index, p in batches:
        probs[index.numpy()] = p.float().numpy()
    return probs


def fit_predict(
    cfg,
    spec,
    stage: str,
    train: pd.DataFrame,
    targets: np.ndarray,
    loss: Loss,
    val: pd.DataFrame,
    predict: dict[str, pd.DataFrame],
    workdir: Path,
    loggers: list,
) -> dict:
    """Train on (`train`, `targets`), then write `<name>.parquet` (id, prob, label) for every
    frame in `predict`. Returns the stage record; test metrics come from `predict['test']`."""
    L.seed_everything(cfg.seed, workers=True)  # each stage starts from the same state, cached or not
    system = ClassifierSystem(
        spec, loss, instantiate(cfg.optimizer), cfg.train.warmup_ratio, cfg.train.grad_clip, stage
    )
    tokenizer = load_tokenizer(spec)
    keep_end = system.model.pooling == "last"
    encoded = encode(train["text"], tokenizer, spec.max_length, targets, keep_end, f"{stage}/train")
    val_encoded = encode(val["text"], tokenizer, spec.max_length, val["label"], keep_end, f"{stage}/val")
    pad_id = tokenizer.pad_token_id
    trainer = instantiate(
        cfg.trainer, max_epochs=cfg.train.epochs, logger=loggers or False, default_root_dir=str(workdir)
    )
    start = time.perf_counter()
    trainer.fit(
        system,
        train_loader(encoded, spec.batch_size, pad_id, cfg.seed, cfg.train.group_by_length),
        inference_loader(val_encoded, spec.eval_batch_size, pad_id),
    )
    train_seconds = time.perf_counter() - start
    record = {
        "model": spec.name,
        "n_train": len(train),
        "train_seconds": train_seconds,
        "train_examples_per_s": cfg.train.epochs * len(train) / train_seconds,
        "truncated_fraction": encoded.truncated_fraction,
        "val": {k.split("/")[-1]: float(v) for k, v in trainer.callback_metrics.items() if "/val/" in k},
    }
    start = time.perf_counter()
    for name, frame in predict.items():
        examples = encode(frame["text"], tokenizer, spec.max_length, frame["label"], keep_end, f"{stage}/{name}")
        probs = predict_probs(trainer, system, examples, spec.eval_batch_size, pad_id)
        pd.DataFrame({"id": frame["id"], "prob": probs, "label": frame["label"]}).to_parquet(
            workdir / f"{name}.parquet"
        )
        if name == "test":
            record["test"] = binary_metrics(probs, frame["label"].to_numpy())
    record["predict_seconds"] = time.perf_counter() - start
    if cfg.save_weights:
        torch.save(system.model.trainable_state_dict(), workdir / "weights.pt")
    return record
