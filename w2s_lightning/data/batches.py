"""Tokenised examples in dynamically padded batches. Training batches group examples of
similar length so little compute goes to padding; inference runs in length order."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from w2s_lightning.distributed import share
from w2s_lightning.errors import DatasetError

log = logging.getLogger(__name__)


class EncodedExamples(Dataset):
    """Token ids with a soft target (probability of label 1) per example."""

    def __init__(self, input_ids: list[list[int]], targets: np.ndarray):
        self.input_ids = input_ids
        self.targets = np.asarray(targets, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> tuple[list[int], float, int]:
        if i < 0:  # a stand-in for a rank with no share of a batch (distributed.share): example ~i
            return self.input_ids[~i], float(self.targets[~i]), i
        return self.input_ids[i], float(self.targets[i]), i

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self))


class FeatureExamples(Dataset):
    """Pooled features of a frozen backbone (linear probes), with the same targets and batching."""

    def __init__(self, features: torch.Tensor, targets):
        self.features = features
        self.targets = np.asarray(targets, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, float, int]:
        if i < 0:  # a stand-in, as in EncodedExamples
            return self.features[~i], float(self.targets[~i]), i
        return self.features[i], float(self.targets[i]), i

    @property
    def lengths(self) -> np.ndarray:
        return np.ones(len(self), dtype=np.int64)


def shorten(text: str, start: int, end: int, cut_from: str, count, max_length: int) -> str | None:
    """`text` with as little of its cuttable part [start, end) dropped (from `cut_from`) as makes
    it fit `max_length` tokens; None when even dropping all of it does not."""
    part = text[start:end]

    def keeping(k: int) -> str:
        kept = part[:k] if cut_from == "end" else part[len(part) - k :]
        return text[:start] + kept + text[end:]

    if count(keeping(0)) > max_length:
        return None
    low, high = 0, len(part)  # the longest kept prefix (suffix) that fits, by bisection
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if count(keeping(mid)) <= max_length else (low, mid - 1)
    return keeping(low)


def encode(
    frame, tokenizer, max_length: int, targets, keep_end: bool, where: str = "", knob: str = "max_length", labels=None
):
    """Token ids of `frame["text"]`, fitted to `max_length`. A text that does not fit loses part of
    its cuttable slot (`cut_start`/`cut_end`, a passage or context; see formatters.py), never the
    question or the answer; a text without one (or still too long) is truncated at the end, or at
    the start for models pooled at the last token (`keep_end`). If truncation makes examples of
    different labels the same input, the stage fails: its labels could not be learned. The labels
    compared are the frame's `label` column, else `labels` (a stage's hard training targets)."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=True)["input_ids"])

    texts = frame["text"].tolist()
    ids = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
    long = [i for i, x in enumerate(ids) if len(x) > max_length]
    hard = 0
    for i in long:
        fitted = None
        if "cut_start" in frame and frame["cut_start"].iat[i] >= 0:
            row = frame.iloc[i]
            fitted = shorten(texts[i], int(row.cut_start), int(row.cut_end), row.cut_from, count, max_length)
        if fitted is not None:
            ids[i] = tokenizer(fitted, add_special_tokens=True)["input_ids"]
        else:
            hard += 1
            ids[i] = ids[i][-max_length:] if keep_end else ids[i][:max_length]
    if long:
        # The share is in results.json either way; the log speaks up when it is more than a few.
        log.log(
            logging.INFO if len(long) > 0.05 * len(ids) else logging.DEBUG,
            "%s: fitted %d/%d examples (%.1f%%) to %d tokens (%d by cutting the whole text, not a passage)",
            where,
            len(long),
            len(ids),
            100 * len(long) / len(ids),
            max_length,
            hard,
        )
        labels = frame["label"].to_numpy() if "label" in frame else labels
        if labels is not None:  # sets predicted without targets have no labels to compare
            check_collisions(ids, frame, np.asarray(labels), set(long), where, max_length, knob)
    examples = EncodedExamples(ids, targets)
    examples.truncated_fraction = len(long) / max(1, len(ids))
    return examples


def check_collisions(ids, frame, labels: np.ndarray, truncated: set[int], where: str, max_length: int, knob: str):
    """Truncated inputs identical to another input of a different label."""
    seen: dict[tuple, int] = {}
    for i, x in enumerate(ids):
        j = seen.setdefault(tuple(x), i)
        if j != i and labels[i] != labels[j] and (i in truncated or j in truncated):
            raise DatasetError(
                f"{where}: after truncation to max_length={max_length} tokens, examples {frame['id'].iat[j]} and "
                f"{frame['id'].iat[i]} have different labels but the same input, so the label was cut off; fix: "
                f"raise {knob} (or shorten the texts)"
            )


class LengthGroupedSampler(Sampler[list[int]]):
    """Shuffled batches of similar-length examples: shuffle, cut into mega-batches of
    `group` batches, sort each by length, then shuffle the batch order. Under data parallelism
    every rank draws the same batches and takes its share of each, so N processes train on the
    batches one process would."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, group: int = 50):
        self.lengths, self.batch_size, self.seed, self.group = lengths, batch_size, seed, group
        self.epoch = 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1
        order = rng.permutation(len(self.lengths))
        mega = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), mega):
            chunk = order[start : start + mega]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        yield from (share(batches[i]) for i in rng.permutation(len(batches)))


class Collate:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows) -> dict[str, torch.Tensor]:
        ids, targets, index = zip(*rows)
        common = {"target": torch.tensor(targets, dtype=torch.float32), "index": torch.tensor(index)}
        if isinstance(ids[0], torch.Tensor):
            return {"features": torch.stack(ids), **common}
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = torch.tensor(x)
            mask[row, : len(x)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, **common}


def train_loader(
    examples: EncodedExamples,
    batch_size: int,
    pad_id: int,
    seed: int,
    group_by_length: bool = True,
    num_workers: int = 0,
) -> DataLoader:
    if group_by_length:
        sampler = LengthGroupedSampler(examples.lengths, batch_size, seed)
    else:
        generator = torch.Generator().manual_seed(seed)
        sampler = SharedBatches(
            torch.utils.data.BatchSampler(
                torch.utils.data.RandomSampler(examples, generator=generator), batch_size, drop_last=False
            )
        )
    return DataLoader(examples, batch_sampler=sampler, collate_fn=Collate(pad_id), num_workers=num_workers)


class SharedBatches(Sampler[list[int]]):
    """This rank's share of each batch of `batches` (any iterable of index lists): a precomputed
    order, or a batch sampler. Lightning's own distributed sampler is off (stages.make_trainer):
    it would split the examples, not the batches, and lose the length grouping."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return (share(list(batch)) for batch in self.batches)


def inference_loader(
    examples: EncodedExamples, batch_size: int, pad_id: int, num_workers: int = 0, generator=None
) -> DataLoader:
    """Longest first, so the largest batch (peak memory) comes first and padding is minimal;
    each batch carries `index` so predictions go back to dataset order (and, under data
    parallelism, are gathered from every rank's share). A loader draws a seed for its workers each
    time it is iterated, from `generator`, else from torch's global one."""
    order = np.argsort(-examples.lengths, kind="stable").tolist()
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return DataLoader(
        examples,
        batch_sampler=SharedBatches(batches),
        collate_fn=Collate(pad_id),
        num_workers=num_workers,
        generator=generator,
    )


def padding_fraction(loader: DataLoader) -> float:
    """Share of the computed token positions that are padding."""
    real = total = 0
    for batch in loader:
        real += int(batch["attention_mask"].sum())
        total += batch["attention_mask"].numel()
    return 1.0 - real / max(1, total)
