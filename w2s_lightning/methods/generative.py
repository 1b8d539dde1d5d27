"""Generative finetuning (Burns et al. 2023, §4.3.2): before the ceiling and the student, the
strong backbone learns the task's texts with its own language-modelling objective: causal LM
for decoders, masked LM for encoders. It reads every split's texts but test's (A, B and
validation, never a label), so the strong model has seen the task's inputs without any word of
supervision on them. A cached stage; the ceiling and the student start from what it saves.

An encoder checkpoint that ships without its masked-LM head (the embedded MiniLM is a sentence
encoder, saved as a bare BertModel) gets that head's transform and output bias initialised
fresh by transformers (its output matrix is tied to the word embeddings, so that part is
pretrained); the record lists the fresh weights. A `model_type:` or `from_scratch` entry starts
from random weights: finetuning it generatively is allowed, and then is pretraining from
scratch on a few thousand texts, not adaptation."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, DataCollatorForLanguageModeling

from w2s_lightning.cache import stage_key
from w2s_lightning.errors import ConfigError, TrainingDiverged
from w2s_lightning.experiment import Experiment, plain
from w2s_lightning.methods import Method, Start
from w2s_lightning.models.backbone import load_config, load_tokenizer, random_weights, resolve_source
from w2s_lightning.models.classifier import is_decoder
from w2s_lightning.stages import trainer_key

log = logging.getLogger(__name__)

SPLITS = ("a", "b", "val")  # every split a method may read the texts of; never test
BACKBONE = "backbone"  # the folder of the stage entry that holds the finetuned backbone


def load_with_head(spec, config, auto) -> tuple[torch.nn.Module, list[str]]:
    """The entry's model with the head of `auto` (an `AutoModelFor...` class), and the names of
    the weights its checkpoint lacked (initialised fresh by transformers)."""
    if random_weights(spec):
        return auto.from_config(config, trust_remote_code=spec.trust_remote_code), []
    model, info = auto.from_pretrained(
        resolve_source(spec.pretrained),
        config=config,
        revision=getattr(spec, "revision", None),  # load_config, called first, refuses one off the hub
        trust_remote_code=spec.trust_remote_code,
        output_loading_info=True,
    )
    return model, sorted(info.get("missing_keys", []))


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids cut at `max_length`: a language model learns from what is kept either way."""
    return tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]


class GenerativeFinetuning(Method):
    name = "generative"

    def __init__(
        self,
        epochs: int = 1,
        lr: float = 5e-5,
        batch_size: int | None = None,
        max_length: int | None = None,
        mlm_probability: float = 0.15,
    ):
        if epochs < 1 or lr <= 0 or not 0 < mlm_probability < 1:
            raise ConfigError(
                f"pretrain: epochs={epochs}, lr={lr}, mlm_probability={mlm_probability}; fix: epochs >= 1, lr > 0 "
                "and 0 < mlm_probability < 1"
            )
        self.epochs, self.lr, self.batch_size = epochs, lr, batch_size
        self.max_length, self.mlm_probability = max_length, mlm_probability

    def __call__(self, exp: Experiment) -> Start:
        spec, cfg = exp.cfg.strong_model, exp.cfg
        key = stage_key(
            "pretrain",
            {
                "model": exp.model_key(spec),
                **self.key,
                "seed": cfg.seed,
                "data": exp.splits.fingerprints(*SPLITS),
                "optimizer": plain(cfg.optimizer),
                "grad_clip": cfg.train.grad_clip,
                "trainer": trainer_key(cfg),
            },
        )
        try:
            result = exp.cache.run("pretrain", key, lambda workdir: self.finetune(exp, workdir))
        except Exception as error:
            error.stage = "pretrain"  # results.json names the stage that failed
            raise
        if result.cached:
            log.info("stage pretrain: reusing %s's finetuned backbone (%s)", spec.name, result.path)
        folder = str(result.path / BACKBONE)
        # The tokenizer stays the original source (so the features and stage keys name it as
        # before), but a hub revision belongs to the hub id only: then the saved copy is read.
        tokenizer = spec.tokenizer or (folder if getattr(spec, "revision", None) else spec.pretrained)
        start = {"pretrained": folder, "tokenizer": tokenizer, "revision": None, "from_scratch": False}
        return Start(OmegaConf.merge(spec, start), key, [result])

    def finetune(self, exp: Experiment, workdir: Path) -> dict:
        cfg, spec = exp.cfg, exp.cfg.strong_model
        L.seed_everything(cfg.seed, workers=True)  # a random init and the masking repeat per seed
        config = load_config(spec)
        causal = is_decoder(config)
        tokenizer = load_tokenizer(spec)
        tokenizer.padding_side = "right"  # positions count from the left; padding must not shift them
        if not causal and tokenizer.mask_token is None:
            raise ConfigError(
                f"pretrain=generative: {spec.name} is an encoder, but its tokenizer has no mask token for masked "
                "LM; fix: set strong_model.tokenizer to one with a mask token, or use pretrain=pretrained"
            )
        try:
            model, fresh = load_with_head(spec, config, AutoModelForCausalLM if causal else AutoModelForMaskedLM)
        except ValueError as err:  # transformers: no such head for this architecture
            raise ConfigError(
                f"pretrain=generative: {spec.name} ({config.model_type}) has no {'causal' if causal else 'masked'} "
                f"LM head in transformers ({err}); fix: use pretrain=pretrained"
            ) from err
        if fresh:
            log.warning(
                "stage pretrain: %s's checkpoint lacks %d LM-head weights, initialised fresh", spec.name, len(fresh)
            )
        if random_weights(spec):
            log.warning(
                "stage pretrain: %s has random weights; generative finetuning pretrains it from scratch", spec.name
            )
        if spec.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" and torch.cuda.is_available() else "cpu")
        model.to(device).train()  # from_pretrained returns eval mode

        corpus = pd.concat([exp.unlabelled(s)[["id", "text"]].assign(split=s) for s in SPLITS], ignore_index=True)
        ids = tokenize(tokenizer, corpus["text"].tolist(), self.max_length or spec.max_length)
        collate = DataCollatorForLanguageModeling(tokenizer, mlm=not causal, mlm_probability=self.mlm_probability)
        batch_size = self.batch_size or spec.batch_size
        micro = min(spec.micro_batch_size or batch_size, batch_size)
        optimizer = instantiate(cfg.optimizer)(model.parameters(), lr=self.lr)
        bf16 = device.type == "cuda" and str(cfg.trainer.precision).startswith("bf16")
        generator = torch.Generator().manual_seed(cfg.seed)
        losses, start = [], time.perf_counter()
        for epoch in range(self.epochs):
            order = torch.randperm(len(ids), generator=generator).tolist()
            for first in range(0, len(order), batch_size):
                batch = [{"input_ids": ids[i]} for i in order[first : first + batch_size]]
                total = 0.0
                for part in range(0, len(batch), micro):
                    rows = {k: v.to(device) for k, v in collate(batch[part : part + micro]).items()}
                    if not (rows["labels"] != -100).any():
                        continue  # nothing masked in these few short texts: no loss to learn from
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        # The mean over the step's examples, as one batch of `batch_size` would give.
                        loss = model(**rows).loss * len(rows["labels"]) / len(batch)
                    loss.backward()
                    total += loss.item()
                if not math.isfinite(total):
                    raise TrainingDiverged(
                        f"stage pretrain: the language-modelling loss of {spec.name} is {total} at step {len(losses)} "
                        f"(epoch {epoch}); nothing is cached; fix: lower pretrain.lr (now {self.lr})"
                    )
                if cfg.train.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(total)
            steps = -(-len(order) // batch_size)
            log.info("stage pretrain: epoch %d, mean LM loss %.4f", epoch, sum(losses[-steps:]) / steps)
        seconds = time.perf_counter() - start
        model.base_model.save_pretrained(workdir / BACKBONE)  # the backbone without its LM head
        tokenizer.save_pretrained(workdir / BACKBONE)
        return {
            "model": spec.name,
            "objective": "causal" if causal else "masked",
            "texts": {s: int((corpus["split"] == s).sum()) for s in SPLITS},
            "steps": len(losses),
            "first_loss": losses[0],
            "last_loss": losses[-1],
            "fresh_head_weights": fresh,
            "random_init": random_weights(spec),
            "train_seconds": seconds,
        }
