"""A no-supervision baseline: B, validation and test labelled by the strong model's own
zero-shot judgement, without training anything. Its test predictions are the "weak" side of
PGR, so PGR then asks how much of the gap between the strong model's zero-shot view and its
ceiling the student closes from that view's labels.

Two modes, chosen from the model (`mode: auto`) or set:
- `lm` (decoders): the LM head's next-token logits after a prompt that asks the question;
  logit = log P(positive word) - log P(negative word), i.e. p = P(yes) / (P(yes) + P(no)).
- `similarity` (encoders without an LM head, such as the embedded MiniLM): the cosine
  similarity of the text's pooled embedding (the entry's pooling) to a description of each
  class; logit = (cos(text, positive) - cos(text, negative)) / temperature, a two-way softmax.
With `center`, the median logit over B is subtracted from every split's logits (B's, not each
split's own, so a test prediction depends on its example alone): half of B is then labelled
each way, which removes the prompt's or the descriptions' bias towards one answer and suits
balanced data (`dataset.balance: true`); it reads no label."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from w2s_lightning.cache import stage_key
from w2s_lightning.data.batches import encode
from w2s_lightning.errors import ConfigError, TrainingDiverged
from w2s_lightning.experiment import Experiment, Labels
from w2s_lightning.methods import Method
from w2s_lightning.methods.generative import load_with_head
from w2s_lightning.models.backbone import load_backbone, load_config, load_tokenizer, random_weights
from w2s_lightning.models.classifier import is_decoder, pool, resolve_pooling
from w2s_lightning.stages import trainer_key

MODES = ("auto", "lm", "similarity")
PREDICTS = ("b", "val", "test")
KNOB = "strong_model.max_length"
PROMPT = 'Tweet: "{text}"\nQuestion: Is this tweet positive about self-driving cars?\nAnswer:'


def padded(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded on the left (the last position is every row's last
    token) or on the right (positions count from 0 in every row, as encoders were trained)."""
    width = max(len(x) for x in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, x in enumerate(rows):
        cols = slice(width - len(x), width) if left else slice(0, len(x))
        ids[row, cols], mask[row, cols] = torch.tensor(x), 1
    return ids, mask


def batches(rows: list[list[int]], size: int):
    """(indices, rows) in length order, longest first, so padding is minimal."""
    order = np.argsort([-len(x) for x in rows], kind="stable")
    for first in range(0, len(order), size):
        index = order[first : first + size]
        yield index, [rows[i] for i in index]


def prompted(frame: pd.DataFrame, template: str) -> pd.DataFrame:
    """Each text inside the prompt; a cuttable passage (formatters.py) keeps its place."""
    head, _, tail = template.partition("{text}")
    out = frame.assign(text=head + frame["text"] + tail)
    if "cut_start" in out:
        shift = np.where(out["cut_start"] >= 0, len(head), 0)
        out = out.assign(cut_start=out["cut_start"] + shift, cut_end=out["cut_end"] + shift)
    return out


class ZeroShot(Method):
    name = "zero_shot"

    def __init__(
        self,
        mode: str = "auto",
        prompt: str = PROMPT,
        positive: str = " yes",
        negative: str = " no",
        positive_description: str = "a positive tweet about self-driving cars",
        negative_description: str = "a negative tweet about self-driving cars",
        temperature: float = 0.03,
        center: bool = True,
    ):
        if mode not in MODES:
            raise ConfigError(f"labels.mode={mode}: not one of {MODES}; fix: set labels.mode to one of them")
        if "{text}" not in prompt:
            raise ConfigError("labels.prompt has no {text}; fix: put {text} where the example goes")
        if not temperature > 0:
            raise ConfigError(f"labels.temperature={temperature}: must be > 0; fix: set it to e.g. 0.03")
        self.mode, self.prompt, self.positive, self.negative = mode, prompt, positive, negative
        self.positive_description, self.negative_description = positive_description, negative_description
        self.temperature, self.center = temperature, center

    def __call__(self, exp: Experiment) -> Labels:
        spec, cfg = exp.cfg.strong_model, exp.cfg
        payload = {
            "model": exp.model_key(spec),
            **self.key,
            "data": exp.splits.fingerprints(*PREDICTS),
            "seed": cfg.seed if random_weights(spec) else None,  # only random weights depend on it
            "trainer": trainer_key(cfg),
        }
        key = stage_key("zero_shot", payload)
        try:
            result = exp.cache.run("zero_shot", key, lambda workdir: self.compute(exp, workdir))
        except Exception as error:
            error.stage = "zero_shot"  # results.json names the stage that failed
            raise
        b, val, test = (exp.predictions(result, split) for split in PREDICTS)
        return Labels(b=b, val=val, test=test, key=key, stages=[result])

    def compute(self, exp: Experiment, workdir: Path) -> dict:
        cfg, spec = exp.cfg, exp.cfg.strong_model
        frames = {split: exp.unlabelled(split) for split in PREDICTS}
        device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" and torch.cuda.is_available() else "cpu")
        bf16 = device.type == "cuda" and str(cfg.trainer.precision).startswith("bf16")
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            mode, logits, truncated = self.logits(spec, frames, device, cfg.seed)
        shift = float(np.median(logits["b"])) if self.center else 0.0
        for split, frame in frames.items():
            if not np.isfinite(logits[split]).all():
                raise TrainingDiverged(
                    f"stage zero_shot: {int((~np.isfinite(logits[split])).sum())} of {len(frame)} zero-shot scores "
                    f"of {spec.name} on {split} are not finite; nothing is cached; fix: trainer.precision=32-true"
                )
            prob = 1 / (1 + np.exp(-(logits[split] - shift)))
            pd.DataFrame({"id": frame["id"], "prob": prob}).to_parquet(workdir / f"{split}.parquet")
        return {
            "model": spec.name,
            "mode": mode,
            "shift": shift,
            "truncated": truncated,
            "train_seconds": 0.0,  # nothing is trained
            "predict_seconds": time.perf_counter() - start,
        }

    @torch.inference_mode()
    def logits(self, spec, frames: dict[str, pd.DataFrame], device, seed: int = 0):
        """(mode, {split: logit of p(label = 1) before centring}, {split: share truncated})."""
        L.seed_everything(seed)  # random-weight entries draw the same model for a seed
        config = load_config(spec)
        mode = self.mode if self.mode != "auto" else "lm" if is_decoder(config) else "similarity"
        if mode == "lm" and not is_decoder(config):
            raise ConfigError(
                f"labels.mode=lm: {spec.name} is not a decoder, so it has no next-token head to ask; "
                "fix: labels.mode=similarity (or auto)"
            )
        tokenizer = load_tokenizer(spec)
        score = self.lm if mode == "lm" else self.similarity
        logits, truncated = score(spec, config, tokenizer, frames, device)
        return mode, logits, truncated

    def answer_id(self, tokenizer, word: str, knob: str, spec) -> int:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ConfigError(
                f"{knob}={word!r} is {len(ids)} tokens for {spec.name}'s tokenizer, and the lm mode compares one "
                "next token; fix: pick a one-token word (BPE tokenizers want its leading space, e.g. ' yes')"
            )
        return ids[0]

    def lm(self, spec, config, tokenizer, frames, device):
        yes = self.answer_id(tokenizer, self.positive, "labels.positive", spec)
        no = self.answer_id(tokenizer, self.negative, "labels.negative", spec)
        if yes == no:
            raise ConfigError("labels.positive and labels.negative are the same token; fix: two different words")
        model = load_with_head(spec, config, AutoModelForCausalLM)[0].to(device).eval()
        logits, truncated = {}, {}
        for split, frame in frames.items():
            # Cut from the start when too long: the question and "Answer:" must stay.
            where = f"stage zero_shot, split {split} ({spec.name})"
            encoded = encode(
                prompted(frame, self.prompt), tokenizer, spec.max_length, np.zeros(len(frame)), True, where, KNOB
            )
            truncated[split], out = encoded.truncated_fraction, np.empty(len(frame))
            for index, rows in batches(encoded.input_ids, spec.eval_batch_size):
                ids, mask = padded(rows, tokenizer.pad_token_id, left=True)
                positions = (mask.cumsum(1) - 1).clamp(min=0)  # left padding must not shift positions
                next_token = (
                    model(
                        input_ids=ids.to(device),
                        attention_mask=mask.to(device),
                        position_ids=positions.to(device),
                        logits_to_keep=1,
                    )
                    .logits[:, -1]
                    .float()
                )
                out[index] = (next_token[:, yes] - next_token[:, no]).cpu().numpy()
            logits[split] = out
        return logits, truncated

    def similarity(self, spec, config, tokenizer, frames, device):
        backbone = load_backbone(spec, config).to(device).eval()
        pooling = resolve_pooling(spec, config)

        def embed(frame: pd.DataFrame, what: str) -> tuple[torch.Tensor, float]:
            where = f"stage zero_shot, {what} ({spec.name})"
            encoded = encode(frame, tokenizer, spec.max_length, np.zeros(len(frame)), pooling == "last", where, KNOB)
            out = [None] * len(frame)
            for index, rows in batches(encoded.input_ids, spec.eval_batch_size):
                ids, mask = padded(rows, tokenizer.pad_token_id, left=False)
                hidden = backbone(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
                for i, row in zip(index, F.normalize(pool(hidden, mask.to(device), pooling).float(), dim=-1)):
                    out[i] = row.cpu()
            return torch.stack(out), encoded.truncated_fraction

        described = pd.DataFrame({"text": [self.positive_description, self.negative_description]})
        classes = embed(described, "class descriptions")[0]
        logits, truncated = {}, {}
        for split, frame in frames.items():
            embedded, truncated[split] = embed(frame, f"split {split}")
            cosine = embedded @ classes.T
            logits[split] = ((cosine[:, 0] - cosine[:, 1]) / self.temperature).double().numpy()
        return logits, truncated
