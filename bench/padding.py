"""How much of the computed token grid is padding, with and without length-grouped batches."""

from __future__ import annotations

import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig

from w2s_lightning.data.batches import encode, inference_loader, padding_fraction, train_loader
from w2s_lightning.data.splits import make_splits
from w2s_lightning.models.backbone import load_config, load_tokenizer
from w2s_lightning.models.classifier import resolve_pooling


def waste(examples, batch_size: int, eval_batch_size: int, pad_id: int, seed: int) -> dict:
    grouped = padding_fraction(train_loader(examples, batch_size, pad_id, seed, group_by_length=True))
    shuffled = padding_fraction(train_loader(examples, batch_size, pad_id, seed, group_by_length=False))
    return {
        "examples": len(examples),
        "train_grouped": grouped,
        "train_shuffled": shuffled,
        "inference_sorted": padding_fraction(inference_loader(examples, eval_batch_size, pad_id)),
        # The real tokens are the same either way, so the computed grid shrinks by this share.
        "compute_saved_by_grouping": 1.0 - (1.0 - shuffled) / (1.0 - grouped),
    }


def measure_padding(cfg: DictConfig) -> dict:
    """On the whole dataset and on split B (what the student and the ceiling train on), with
    the strong model's tokenizer, max_length and batch sizes."""
    spec = cfg.strong_model
    frames = instantiate(cfg.dataset.loader)
    splits = make_splits(frames, cfg.dataset, cfg.seed)
    tokenizer = load_tokenizer(spec)
    keep_end = resolve_pooling(spec, load_config(spec)) == "last"
    sets = {"dataset": pd.concat(list(frames.values()), ignore_index=True), "split_b": splits.b}
    result = {
        "dataset_name": cfg.dataset.name,
        "model": spec.name,
        "max_length": spec.max_length,
        "batch_size": spec.batch_size,
        "eval_batch_size": spec.eval_batch_size,
    }
    for name, frame in sets.items():
        examples = encode(frame, tokenizer, spec.max_length, frame["label"].to_numpy(float), keep_end, name)
        result[name] = waste(examples, spec.batch_size, spec.eval_batch_size, tokenizer.pad_token_id, cfg.seed)
        result[name]["truncated_fraction"] = examples.truncated_fraction
    return result
