"""w2s-lightning against its peer, openai/weak-to-strong's own algorithm (bench/peer_openai.py),
on the same model (random-init GPT-2 at the mode's shapes), the same texts and the same machine,
each side with its own defaults: ours length-grouped batches, the precision `trainer.precision`
resolves to, the default logger; theirs batch 32 in minibatches of 1, float32 on a CPU, Adam,
cosine annealing, evaluation batch 32.

Three figures, both sides in turn within every repeat (the order rotating across repeats):
- training: one epoch over split B cut to whole batches; theirs reads the examples in the order
  of our shuffled loader, so its batches are exactly those of our `group_by_length=false` loop,
  and our length-grouped loop sees the same examples in other batches;
- inference: the test split, our `stages.run_predict` against their `eval_model_acc`;
- whole experiment: `python train.py ...` against `python bench/peer_openai.py ...`, each a fresh
  process from start-up to exit (weak on A, weak labels on B, ceiling, student, test predictions).
Each is timed by the wall clock and in CPU time; the speed-up is their time over ours."""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import datasets
import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from bench import peer_openai as theirs
from bench.common import (
    ROOT,
    Clock,
    compose_cfg,
    digest,
    make_trainer,
    offline_env,
    run_timed,
    spread,
    synchronize,
    torch_device,
)
from bench.modes import Settings
from bench.throughput import Workload, build_workload, count_parameters, encode_split, rates, run_framework
from w2s_lightning.data.batches import EncodedExamples
from w2s_lightning.data.splits import make_splits
from w2s_lightning.losses import CrossEntropy
from w2s_lightning.models.backbone import MODEL_TYPE_PREFIX, resolve_source
from w2s_lightning.models.system import ClassifierSystem
from w2s_lightning.stages import run_predict

SPLITS = ("a", "b", "test")
LOOPS = ("theirs", "ours_grouped", "ours_shuffled")


def peer_model(spec) -> dict:
    """A random-init catalogue entry as the peer builds it: its model type and config changes."""
    if not spec.pretrained.startswith(MODEL_TYPE_PREFIX):
        raise SystemExit(f"the peer needs a random-init entry (model_type:...), not {spec.pretrained}")
    return {"model_type": spec.pretrained[len(MODEL_TYPE_PREFIX) :], "config": dict(spec.config_overrides)}


def their_dtype(device: torch.device) -> str:
    # train_weak_to_strong.py loads its models in bf16 where CUDA supports it, else in float32.
    return "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"


def whole_batches(work: Workload, batch_size: int) -> Workload:
    """B cut to whole batches: their loop drops a last partial batch, ours would train on it."""
    n = len(work.examples) // batch_size * batch_size
    examples = EncodedExamples(work.examples.input_ids[:n], work.examples.targets[:n])
    return dataclasses.replace(work, examples=examples, warmup=0, timed=n // batch_size)


def batch_record(order: list[tuple[int, ...]], lengths: np.ndarray, minibatch: int) -> dict:
    """What a loop trained on, from the examples it actually saw at each step. Padded tokens: each
    minibatch (ours: each batch) is padded to its longest example."""
    real = padded = 0
    for step in order:
        for i in range(0, len(step), minibatch):
            chunk = lengths[list(step[i : i + minibatch])]
            real += int(chunk.sum())
            padded += len(chunk) * int(chunk.max())
    seen = sorted(i for step in order for i in step)
    return {
        "steps": len(order),
        "examples": len(seen),
        "real_tokens": real,
        "padded_tokens": padded,
        "batches_sha": digest([list(step) for step in order]),
        "examples_sha": digest(seen),
    }


def run_theirs_training(work: Workload, model: dict, order: list[int]) -> tuple[float, float, list]:
    ids, targets = work.examples.input_ids, work.examples.targets
    ds = datasets.Dataset.from_dict(
        {
            "input_ids": [ids[i] for i in order],
            "soft_label": [[1.0 - float(targets[i]), float(targets[i])] for i in order],
            "index": order,
        }
    )
    device = work.device
    net = theirs.build_model(model, getattr(torch, their_dtype(device)), work.cfg.seed).to(device)
    defaults, seen = theirs.OPENAI_DEFAULTS, []
    clock = Clock().start()
    theirs.train_model(
        net, ds, defaults["batch_size"], defaults["lr"], 1, defaults["minibatch_size"], device, seen=seen
    )
    synchronize(device)
    wall, cpu = clock.read()
    return wall, cpu, seen


def run_ours_inference(cfg: DictConfig, examples: EncodedExamples, pad_id: int) -> tuple[float, float]:
    spec = cfg.strong_model
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    system = ClassifierSystem(spec, CrossEntropy(), instantiate(cfg.optimizer), stage="ceiling")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(
            cfg, logger=False, enable_progress_bar=False, default_root_dir=tmp, enable_checkpointing=False
        )
        clock = Clock().start()
        run_predict(trainer, system, examples, spec.eval_batch_size, pad_id)
        synchronize(torch_device(cfg))
        return clock.read()


def run_theirs_inference(cfg: DictConfig, model: dict, examples: EncodedExamples, texts: list[str], device):
    ds = datasets.Dataset.from_dict(
        {
            "txt": texts,
            "input_ids": examples.input_ids,
            "soft_label": [[1.0 - float(t), float(t)] for t in examples.targets],
        }
    )
    net = theirs.build_model(model, getattr(torch, their_dtype(device)), cfg.seed).to(device)
    clock = Clock().start()
    theirs.eval_model_acc(net, ds, theirs.OPENAI_DEFAULTS["eval_batch_size"], device)
    synchronize(device)
    return clock.read()


def experiment_env(threads: int) -> dict:
    # torch sizes its thread pool from OMP_NUM_THREADS: both processes get the benchmark's threads.
    env = {**offline_env(), "OMP_NUM_THREADS": str(threads)}
    env.pop("WANDB_PROJECT", None)  # their logger goes to W&B only when this is set
    return env


def run_ours_experiment(overrides: list[str], root: Path, threads: int) -> dict:
    root.mkdir(parents=True)
    run_dir = root / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, f"paths.root_dir={root}", f"hydra.run.dir={run_dir}"]
    proc, wall, cpu = run_timed(cmd, cwd=root, env=experiment_env(threads))
    if proc.returncode != 0:
        raise RuntimeError(f"train.py failed ({' '.join(cmd)}):\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    splits = json.loads((run_dir / "splits.json").read_text())
    return {
        "seconds": wall,
        "cpu_seconds": cpu,
        "splits_sha": {name: digest(splits[name]) for name in SPLITS},
        "stages": {
            name: {"acc": results[name]["acc"], "train_seconds": results[name]["train_seconds"]}
            for name in ("weak", "ceiling", "student")
        },
    }


def peer_spec(cfg: DictConfig, data: Path, device: torch.device) -> dict:
    defaults = theirs.OPENAI_DEFAULTS
    return {
        "data": str(data),
        "tokenizer": resolve_source(cfg.strong_model.tokenizer),
        "weak": peer_model(cfg.weak_model),
        "strong": peer_model(cfg.strong_model),
        # Their filter keeps texts shorter than max_ctx: ours are cut at max_length tokens.
        "max_ctx": cfg.strong_model.max_length + 1,
        # Both sides make as many passes: their default (2) is ours too unless train.epochs says otherwise.
        "epochs": int(cfg.train.epochs),
        "seed": int(cfg.seed),
        "device": device.type,
        "dtype": their_dtype(device),
        "batch_size": defaults["batch_size"],
        "minibatch_size": defaults["minibatch_size"],
        "eval_batch_size": defaults["eval_batch_size"],
        "weak_lr": defaults["lr"],
        "strong_lr": defaults["lr"],
    }


def run_theirs_experiment(spec: dict, root: Path, threads: int) -> dict:
    root.mkdir(parents=True)
    path = root / "spec.json"
    path.write_text(json.dumps({**spec, "results_folder": str(root / "results"), "out": str(root / "peer.json")}))
    cmd = [sys.executable, str(ROOT / "bench" / "peer_openai.py"), str(path)]
    proc, wall, cpu = run_timed(cmd, cwd=root, env=experiment_env(threads))
    if proc.returncode != 0:
        raise RuntimeError(f"the peer failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    record = json.loads((root / "peer.json").read_text())
    return {"seconds": wall, "cpu_seconds": cpu, **record}


def write_peer_data(splits, path: Path) -> dict:
    """The splits our run draws, as the texts and labels the peer reads; returns their id hashes."""
    with path.open("w") as f:
        for name in SPLITS:
            frame = getattr(splits, name)
            for row in frame[["id", "text", "label"]].itertuples(index=False):
                f.write(json.dumps({"split": name, "id": row.id, "txt": row.text, "hard_label": int(row.label)}) + "\n")
    return {name: digest(getattr(splits, name)["id"].tolist()) for name in SPLITS}


def speedup(theirs_values: list[float], ours_values: list[float]) -> dict:
    return spread([t / o for t, o in zip(theirs_values, ours_values)])


@dataclasses.dataclass
class Bench:
    """What both sides run on: our two training loops' workloads, the peer's model and data
    order, the encoded test split, the peer's experiment spec and our train.py overrides."""

    grouped: Workload
    shuffled: Workload
    strong: dict
    order: list[int]
    test: EncodedExamples
    test_texts: list[str]
    pad_id: int
    spec: dict
    overrides: list[str]


def run_rounds(bench: Bench, repeats: int, threads: int, workdir: Path):
    """Every figure of both sides, `repeats` times, each side in turn; the order rotates."""
    cfg, device = bench.grouped.cfg, bench.grouped.device
    train = {name: {"seconds": [], "cpu": [], "orders": []} for name in LOOPS}
    infer = {name: {"seconds": [], "cpu": []} for name in ("theirs", "ours")}
    whole = {name: [] for name in ("theirs", "ours")}
    precision, fit = None, []
    for r in range(repeats):
        # Rotating the order spreads a shared machine's slow spells over every loop.
        for name in LOOPS[r % 3 :] + LOOPS[: r % 3]:
            if name == "theirs":
                wall, cpu, seen = run_theirs_training(bench.shuffled, bench.strong, bench.order)
            else:
                run = run_framework(bench.grouped if name == "ours_grouped" else bench.shuffled)
                wall, cpu, seen, precision = run.seconds, run.cpu_seconds, run.order, run.precision
                if name == "ours_grouped":
                    fit.append(run.fit_seconds)
            train[name]["seconds"].append(wall)
            train[name]["cpu"].append(cpu)
            train[name]["orders"].append(seen)
        for name in ("theirs", "ours") if r % 2 == 0 else ("ours", "theirs"):
            if name == "theirs":
                wall, cpu = run_theirs_inference(cfg, bench.strong, bench.test, bench.test_texts, device)
            else:
                wall, cpu = run_ours_inference(cfg, bench.test, bench.pad_id)
            infer[name]["seconds"].append(wall)
            infer[name]["cpu"].append(cpu)
        for name in ("theirs", "ours") if r % 2 == 0 else ("ours", "theirs"):
            root = workdir / f"experiment{r}-{name}"
            if name == "theirs":
                whole[name].append(run_theirs_experiment(bench.spec, root, threads))
            else:
                whole[name].append(run_ours_experiment(bench.overrides, root, threads))
    return train, infer, whole, precision, fit


def pair(their: dict, ours: dict) -> dict:
    """Their time over ours per repeat (the same work on both sides): above 1, ours is faster."""
    return {"wall": speedup(their["seconds"], ours["seconds"]), "cpu": speedup(their["cpu"], ours["cpu"])}


def measure_peer(settings: Settings, workdir: Path, repeats: int, threads: int) -> dict:
    overrides = settings.peer_overrides()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = compose_cfg(overrides, workdir)
    batch_size = theirs.OPENAI_DEFAULTS["batch_size"]
    splits = make_splits(instantiate(cfg.dataset.loader), cfg.dataset, cfg.seed)
    grouped = whole_batches(build_workload(cfg, 0, 1, splits), batch_size)
    shuffled = dataclasses.replace(grouped, group_by_length=False)
    grouped = dataclasses.replace(grouped, group_by_length=True)
    device, lengths = grouped.device, grouped.examples.lengths
    strong, weak = peer_model(cfg.strong_model), peer_model(cfg.weak_model)
    # Their data order: our shuffled loader's batches laid end to end, so their batches are ours.
    order = [int(i) for batch in shuffled.batches(shuffled.loader()) for i in batch["index"]]

    spec_ours = cfg.strong_model
    test, pad_id = encode_split(cfg, splits.test, "bench/peer test")
    data = workdir / "peer_data.jsonl"
    data_sha = write_peer_data(splits, data)
    spec = peer_spec(cfg, data, device)

    bench = Bench(grouped, shuffled, strong, order, test, splits.test["text"].tolist(), pad_id, spec, overrides)
    train, infer, whole, precision, fit = run_rounds(bench, repeats, threads, workdir)

    minibatch = {"theirs": theirs.OPENAI_DEFAULTS["minibatch_size"], "ours_grouped": 10**9, "ours_shuffled": 10**9}
    batches = {name: batch_record(train[name]["orders"][0], lengths, minibatch[name]) for name in LOOPS}
    repeatable = all(all(o == train[name]["orders"][0] for o in train[name]["orders"]) for name in LOOPS)
    counts = {"examples": len(order), "real_tokens": batches["theirs"]["real_tokens"]}
    result = {
        "reproduces": "openai/weak-to-strong (commit 6b450f2): weak_to_strong/train.py, loss.py, model.py, eval.py, "
        "datasets.py and train_weak_to_strong.py, re-typed in bench/peer_openai.py",
        "device": str(device),
        "torch_threads": threads,
        "repeats": repeats,
        "models": {
            "strong": {
                **settings.peer_strong,
                "parameters": count_parameters(theirs.build_model(strong, torch.float32, 0)),
            },
            "weak": {**settings.peer_weak, "parameters": count_parameters(theirs.build_model(weak, torch.float32, 0))},
        },
        "ours": {
            "precision": precision,
            "batch_size": spec_ours.batch_size,
            "micro_batch_size": spec_ours.micro_batch_size or spec_ours.batch_size,
            "eval_batch_size": spec_ours.eval_batch_size,
            "lr": spec_ours.lr,
            "max_length": spec_ours.max_length,
            "epochs": int(cfg.train.epochs),
            "group_by_length": bool(cfg.train.group_by_length),
            "logger": [str(k) for k in cfg.logger] if cfg.get("logger") else [],
        },
        "theirs": {
            **theirs.OPENAI_DEFAULTS,
            "dtype": spec["dtype"],
            "max_ctx": spec["max_ctx"],
            "epochs": spec["epochs"],
        },
        "training": {
            "examples": len(order),
            "steps": len(order) // batch_size,
            **{name: rates(train[name]["seconds"], train[name]["cpu"], counts) for name in LOOPS},
            "ours_grouped_fit_seconds": spread(fit),
        },
        "batches": {
            **batches,
            "same_batches_theirs_and_ours_shuffled": batches["theirs"]["batches_sha"]
            == batches["ours_shuffled"]["batches_sha"],
            "same_examples": len({batches[name]["examples_sha"] for name in LOOPS}) == 1,
            "same_real_tokens": len({batches[name]["real_tokens"] for name in LOOPS}) == 1,
            "same_order_every_repeat": repeatable,
        },
        "inference": {
            "examples": len(test),
            "theirs": rates(infer["theirs"]["seconds"], infer["theirs"]["cpu"], {"examples": len(test)}),
            "ours": rates(infer["ours"]["seconds"], infer["ours"]["cpu"], {"examples": len(test)}),
        },
        "experiment": {
            "command_ours": f"python train.py {' '.join(overrides)} paths.root_dir=<tmp>",
            "command_theirs": "python bench/peer_openai.py <spec.json>",
            "spec_theirs": {k: v for k, v in spec.items() if k not in ("data", "results_folder", "out")},
            "data": {name: len(getattr(splits, name)) for name in SPLITS},
            # Both sides read the same texts: the peer's file and our run's splits.json, id for id.
            "same_splits": all(run["splits_sha"] == data_sha for run in whole["ours"]),
            "theirs": {
                "seconds": spread([run["seconds"] for run in whole["theirs"]]),
                "cpu_seconds": spread([run["cpu_seconds"] for run in whole["theirs"]]),
                "imports": whole["theirs"][-1]["imports"],
                "phases": whole["theirs"][-1]["phases"],
                "stages": whole["theirs"][-1]["stages"],
            },
            "ours": {
                "seconds": spread([run["seconds"] for run in whole["ours"]]),
                "cpu_seconds": spread([run["cpu_seconds"] for run in whole["ours"]]),
                "stages": whole["ours"][-1]["stages"],
            },
        },
    }
    result["speedup"] = {
        "training_grouped": pair(train["theirs"], train["ours_grouped"]),
        "training_shuffled": pair(train["theirs"], train["ours_shuffled"]),
        "inference": pair(infer["theirs"], infer["ours"]),
        "experiment": {
            "wall": speedup([run["seconds"] for run in whole["theirs"]], [run["seconds"] for run in whole["ours"]]),
            "cpu": speedup(
                [run["cpu_seconds"] for run in whole["theirs"]], [run["cpu_seconds"] for run in whole["ours"]]
            ),
        },
    }
    return result
