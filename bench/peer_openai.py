"""The peer: openai/weak-to-strong's training algorithm, re-typed from its published code
(github.com/openai/weak-to-strong, commit 6b450f2) so that `bench/peer.py` can time it against
w2s-lightning on the same model, texts and machine. Nothing here is copied; it reproduces:

- `TransformerWithHead` (weak_to_strong/model.py): the causal LM's transformer, pooled at the last
  token that is not id 0 (the length is counted as non-zero ids, no attention mask is passed,
  padding is on the right), a bias-free 2-way linear head initialised to zeros; a linear probe
  detaches the pooled state.
- `train_model` (weak_to_strong/train.py): dropout off (`model.eval()`, their default
  train_with_dropout=False); nsteps = len(data) · epochs // batch_size, so a last partial batch is
  dropped; the data is read in its stored order, the same order every epoch; plain Adam over all
  parameters, no weight decay, no gradient clipping; `CosineAnnealingLR(T_max=nsteps)` stepped
  once per step, no warmup; each batch is cut into minibatches of `minibatch_size` consecutive
  examples, each padded with 0 to its own longest example and run forward on its own; the
  logits of the whole batch are stacked, one loss and one backward per batch; the loss and the
  batch accuracy are read back every step (`.item()`) and appended to the run's log.jsonl.
- `xent_loss` (weak_to_strong/loss.py): cross-entropy against the soft label [1 − p, p].
- `eval_model_acc` (weak_to_strong/eval.py): no_grad, batches of `eval_batch_size` in stored
  order padded to the batch's longest text, softmax, every row turned into Python lists and the
  whole result into a `datasets.Dataset`; the student's weak labels are the weak model's
  softmax over B (its `soft_label` column).
- `load_dataset` / `tokenize_dataset` (weak_to_strong/datasets.py): each split as a
  `datasets.Dataset` with `soft_label` added and shuffled with the seed; every stage tokenises its
  own sets again, one text at a time, and drops texts of `max_ctx` tokens or more.
- the experiment of train_weak_to_strong.py: weak model on the first half with ground truth,
  tested on test and run over the second half for weak labels; strong model on the second half
  with ground truth (the ceiling); strong model on the weak labels (the student); each stage
  saves its weights and a results.pkl and collects garbage, then accuracies go to a summary JSON.
- their defaults (train_weak_to_strong.py, train_simple.py): batch 32, minibatch 1 per device
  (`minibatch_size_per_device=None`), 2 epochs, Adam, cosine annealing, gpt2's learning rate
  5e-5 and evaluation batch 32, float32 on a machine without bf16 CUDA.

Differences forced by running offline next to w2s-lightning: the device is given (their code
calls `.to("cuda")`); the model is built from a transformers config with random weights instead
of downloaded; the tokenizer is the one the benchmark's random-init entries use; the splits A, B
and test come from a JSONL file with the texts w2s-lightning draws (their loader pulls a hub
dataset and halves its train split); one transfer loss, the configured one (their default runs
"xent,logconf", two students), so both sides train the same three models; `wandb` is imported
as their logger module does, and `fire` and `torch_optimizer` too where installed; W&B logging
stays off as it does for them without WANDB_PROJECT.

    python bench/peer_openai.py SPEC.json     # one whole experiment; writes the JSON named in SPEC
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the heavy imports: their start-up is part of the experiment
STARTED_CPU = time.process_time()

import gc  # noqa: E402
import importlib.util  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

# Their modules import these at the top (weak_to_strong/logger.py, train.py, train_simple.py).
OPTIONAL_IMPORTS = ("wandb", "fire", "torch_optimizer")
IMPORTED = {name: importlib.util.find_spec(name) is not None for name in OPTIONAL_IMPORTS}
for _name, _present in IMPORTED.items():
    if _present:
        __import__(_name)
IMPORT_SECONDS = time.perf_counter() - STARTED
IMPORT_CPU_SECONDS = time.process_time() - STARTED_CPU

# train_weak_to_strong.py's main() and its gpt2 ModelConfig; lr and eval batch are per model there.
OPENAI_DEFAULTS = {
    "batch_size": 32,
    "minibatch_size": 1,  # minibatch_size_per_device=None becomes 1 on one device
    "eval_batch_size": 32,
    "lr": 5e-5,
    "epochs": 2,
    "optimizer": "adam",
    "lr_schedule": "cosine_anneal",
    "train_with_dropout": False,
    "dtype": "float32",
}
PAD_ID = 0  # torch's pad_sequence default, and what their length count treats as padding


class PeerModel(torch.nn.Module):
    """TransformerWithHead, built from a config with random weights."""

    def __init__(self, config, linear_probe: bool = False, dtype: torch.dtype = torch.float32):
        super().__init__()
        config.num_labels = 2
        self.lm = AutoModelForCausalLM.from_config(config, dtype=dtype)
        # Their `lm.transformer` (GPT-2, Qwen-1); `base_model` names the same module for any family.
        self.transformer = self.lm.base_model
        hidden = config.get_text_config().hidden_size
        self.score = torch.nn.Linear(hidden, 2, bias=False).to(dtype)
        torch.nn.init.normal_(self.score.weight, std=0.0)
        self.linear_probe = linear_probe

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        lengths = (input_ids != PAD_ID).sum(dim=-1)
        hidden = self.transformer(input_ids)[0]
        pooled = torch.stack([hidden[i, lengths[i] - 1, :] for i in range(len(lengths))])
        if self.linear_probe:
            pooled = pooled.detach()
        return self.score(pooled)


def xent_loss(logits: torch.Tensor, labels: torch.Tensor, step_frac: float) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits, labels).mean()


def append_jsonl(path: Path | None, record: dict) -> None:
    if path is not None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def train_model(
    model: PeerModel,
    ds: datasets.Dataset,
    batch_size: int,
    lr: float,
    epochs: int,
    minibatch_size: int,
    device: torch.device,
    log_path: Path | None = None,
    seen: list | None = None,
    verbose: bool = False,
) -> dict:
    """Their training loop. `seen`, when given, receives the `index` column of every batch, so the
    benchmark can check which examples each step trained on (their loop records nothing)."""
    assert batch_size % minibatch_size == 0
    model.eval()
    nsteps = len(ds) * epochs // batch_size
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, nsteps)
    rows = itertools.chain.from_iterable(itertools.repeat(ds, epochs))
    losses, accuracies = [], []
    for step in range(nsteps):
        logits, labels, indices = [], [], []
        for _ in range(batch_size // minibatch_size):
            try:
                mbatch = [next(rows) for _ in range(minibatch_size)]
            except StopIteration:
                break
            input_ids = (
                torch.nn.utils.rnn.pad_sequence([torch.tensor(ex["input_ids"]) for ex in mbatch])
                .transpose(0, 1)
                .to(device)
            )
            target = torch.tensor([ex["soft_label"] for ex in mbatch]).to(device)
            logits.extend(model(input_ids).to(device))
            labels.extend(target)
            if seen is not None:
                indices += [ex["index"] for ex in mbatch]
        all_logits, all_labels = torch.stack(logits), torch.stack(labels)
        loss = xent_loss(all_logits, all_labels, step / nsteps)
        losses.append(loss.item())
        loss.backward()
        accuracies.append((all_logits.argmax(1) == all_labels.argmax(1)).float().mean().item())
        append_jsonl(
            log_path,
            {
                "step": step,
                "progress": step / nsteps,
                "loss": losses[-1],
                "train_accuracy": accuracies[-1],
                "lr": scheduler.get_last_lr()[0],
            },
        )
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        if seen is not None:
            seen.append(tuple(indices))
        if verbose and step % 10 == 0:
            print(f"step {step}/{nsteps} loss {np.mean(losses):.4f} acc {np.mean(accuracies):.3f}", flush=True)
            losses, accuracies = [], []
    return {"steps": nsteps}


def eval_model_acc(model: PeerModel, ds: datasets.Dataset, eval_batch_size: int, device: torch.device):
    """Their evaluation: per-example results as a `datasets.Dataset`; `soft_label` holds p."""
    model.eval()
    with torch.no_grad():
        results = []
        for start in range(0, len(ds), eval_batch_size):
            batch = ds[start : start + eval_batch_size]
            input_ids = torch.nn.utils.rnn.pad_sequence(
                [torch.tensor(ex) for ex in batch["input_ids"]], batch_first=True
            ).to(device)
            raw = model(input_ids)
            probs = torch.nn.functional.softmax(raw, dim=-1).detach().float().cpu().numpy().tolist()
            logits = raw.detach().float().cpu().numpy().tolist()
            preds = np.argmax(probs, axis=-1)
            labels = np.argmax(batch["soft_label"], axis=-1)
            results.extend(
                {
                    "txt": txt,
                    "input_ids": ids,
                    "gt_label": label,
                    "hard_label": pred,
                    "acc": label == pred,
                    "logits": logit,
                    "soft_label": prob,
                }
                for ids, txt, label, pred, prob, logit in zip(
                    batch["input_ids"], batch["txt"], labels, preds, probs, logits
                )
            )
        return datasets.Dataset.from_list(results)


def tokenize_dataset(ds: datasets.Dataset, tokenizer, max_ctx: int) -> datasets.Dataset:
    tokenized = ds.map(lambda ex: {"input_ids": tokenizer(ex["txt"])["input_ids"]}, batched=False)
    return tokenized.filter(lambda ex: len(ex["input_ids"]) < max_ctx)


def with_soft_labels(rows: list[dict], seed: int) -> datasets.Dataset:
    ds = datasets.Dataset.from_list(rows)
    ds = ds.map(lambda ex: {"soft_label": [1 - float(ex["hard_label"]), float(ex["hard_label"])]})
    return ds.shuffle(seed=seed)


def build_model(model_spec: dict, dtype: torch.dtype, seed: int) -> PeerModel:
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_spec["model_type"], **model_spec["config"])
    return PeerModel(config, dtype=dtype)


class Phases:
    """Wall and CPU seconds per named phase of the experiment."""

    def __init__(self):
        self.record: dict[str, dict] = {}

    def time(self, name: str):
        phases = self

        class Span:
            def __enter__(self):
                self.wall, self.cpu = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                entry = phases.record.setdefault(name, {"seconds": 0.0, "cpu_seconds": 0.0})
                entry["seconds"] += time.perf_counter() - self.wall
                entry["cpu_seconds"] += time.process_time() - self.cpu

        return Span()


def run_stage(spec: dict, phases: Phases, label: str, model_spec: dict, lr: float, train_ds, test_ds, inference_ds):
    """train_and_save_model for one stage, as train_weak_to_strong.py's inner train_model calls it."""
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    save_path = Path(spec["results_folder"]) / label
    save_path.mkdir(parents=True, exist_ok=True)
    with phases.time(f"{label}/tokenize"):
        tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
        train_ds = tokenize_dataset(train_ds, tokenizer, spec["max_ctx"])
        test_ds = tokenize_dataset(test_ds, tokenizer, spec["max_ctx"])
        if inference_ds is not None:
            inference_ds = tokenize_dataset(inference_ds, tokenizer, spec["max_ctx"])
    with phases.time(f"{label}/build"):
        model = build_model(model_spec, dtype, spec["seed"]).to(device)
    with phases.time(f"{label}/train"):
        train_model(
            model,
            train_ds,
            spec["batch_size"],
            lr,
            spec["epochs"],
            spec["minibatch_size"],
            device,
            log_path=save_path / "log.jsonl",
            verbose=True,
        )
    with phases.time(f"{label}/test"):
        test_results = eval_model_acc(model, test_ds, spec["eval_batch_size"], device)
    with phases.time(f"{label}/save"):
        from safetensors.torch import save_model

        save_model(model, str(save_path / "model.safetensors"))
        model.lm.config.to_json_file(save_path / "config.json")
    inference_results = None
    if inference_ds is not None:
        with phases.time(f"{label}/inference"):
            inference_results = eval_model_acc(model, inference_ds, spec["eval_batch_size"], device)
    with phases.time(f"{label}/save"), open(save_path / "results.pkl", "wb") as f:
        pickle.dump(
            {
                "avg_acc_test": float(np.mean(test_results["acc"])),
                "avg_acc_inference": float(np.mean(inference_results["acc"])) if inference_results else None,
                "test_results": test_results,
                "inference_results": inference_results or [],
            },
            f,
        )
    with phases.time(f"{label}/save"):
        gc.collect()  # their clear_mem() after every stage
    return {"n_train": len(train_ds), "test_acc": float(np.mean(test_results["acc"]))}, inference_results


def experiment(spec: dict) -> dict:
    phases = Phases()
    with phases.time("data"):
        rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines()]
        split = {name: [r for r in rows if r["split"] == name] for name in ("a", "b", "test")}
        a, b, test = (with_soft_labels(split[name], spec["seed"]) for name in ("a", "b", "test"))
    stages = {}
    stages["weak"], weak_ds = run_stage(spec, phases, "weak", spec["weak"], spec["weak_lr"], a, test, b)
    stages["ceiling"], _ = run_stage(spec, phases, "ceiling", spec["strong"], spec["strong_lr"], b, test, None)
    stages["student"], _ = run_stage(spec, phases, "student", spec["strong"], spec["strong_lr"], weak_ds, test, None)
    summary = {name: stage["test_acc"] for name, stage in stages.items()}
    Path(spec["results_folder"], "results_summary.json").write_text(json.dumps(summary))
    return {
        "imports": {"seconds": IMPORT_SECONDS, "cpu_seconds": IMPORT_CPU_SECONDS, "present": IMPORTED},
        "phases": phases.record,
        "stages": stages,
        "seconds": time.perf_counter() - STARTED,
        "cpu_seconds": time.process_time() - STARTED_CPU,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[0]).read_text())
    os.environ.pop("WANDB_PROJECT", None)  # their logger logs to W&B only when this is set
    record = experiment(spec)
    Path(spec["out"]).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
