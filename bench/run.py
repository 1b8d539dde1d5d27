"""How fast w2s-lightning is, against a bare PyTorch loop, against openai/weak-to-strong's own
algorithm and against the machine's limit.

    python bench/run.py --quick                     # tiny models: every section, a few minutes
    python bench/run.py --threads 1                 # the embedded models and the peer, ~25 min on 2 quiet cores
    python bench/run.py --sections peer --threads 1 # ours against openai/weak-to-strong only
    python bench/run.py --device cuda               # on a GPU: bf16-mixed, larger batches, MFU
    python bench/run.py --device cuda --model gpt2 --random-init   # any catalogue entry, offline
    python bench/run.py --sections compile          # does torch.compile pay for itself? (~10 min on 2 cores)

Writes bench/results/<device>[-quick].json (or --out) and prints a table. See bench/README.md."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lightning
import torch
import transformers

from bench.common import ROOT, children_cpu, compose_cfg, load_average, quiet
from bench.compile import measure_compile
from bench.flops import dtype_of_precision
from bench.limit import measure_peak, utilisation
from bench.memory import measure_memory
from bench.mfu import measure_mfu
from bench.modes import settings_for
from bench.padding import measure_padding
from bench.peer import measure_peer
from bench.probe import measure_probe
from bench.report import render
from bench.sweep import measure_sweep
from bench.throughput import measure_overhead

# limit reads overhead's figures, mfu the limit's peak.
SECTION_ORDER = ("padding", "overhead", "limit", "probe", "memory", "sweep", "peer", "mfu", "compile")
# Run only when asked for: compiling costs minutes on a CPU, and the answer changes only with torch.
ON_REQUEST = ("compile",)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models and few steps: a smoke run")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="repeats of every timed figure")
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/<device>[-quick].json)")
    p.add_argument("--model", help="strong model under test: a conf/model entry")
    p.add_argument("--weak-model", help="weak model of the memory experiment")
    p.add_argument("--random-init", action="store_true", help="random weights of --model's architecture, offline")
    p.add_argument("--model-type", help="with --random-init: build the library's default config of this model_type")
    p.add_argument("--batch-size", type=int, help="strong model batch size (default: the catalogue's; 128 on cuda)")
    p.add_argument("--steps", type=int, dest="timed_steps", help="timed training steps per loop")
    p.add_argument("--warmup-steps", type=int, help="untimed steps before the clock starts")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, same for both loops")
    p.add_argument("--mfu-model", help="cuda only: the MFU section's student (default qwen2_5_0_5b)")
    p.add_argument("--mfu-length", type=int, help="cuda only: the MFU section's sequence length (default 512)")
    default = ",".join(n for n in SECTION_ORDER if n not in ON_REQUEST)
    p.add_argument("--sections", default=default, help=f"comma list of {', '.join(SECTION_ORDER)} (default: {default})")
    p.add_argument("--override", action="append", default=[], dest="extra", help="extra Hydra override (repeatable)")
    args = p.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTION_ORDER)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTION_ORDER)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    return args


def process_and_children_cpu() -> float:
    return time.process_time() + children_cpu()


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() or None


def metadata(args: argparse.Namespace, mode: str) -> dict:
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
        "mode": mode,
        "device": args.device,
        "device_name": device_name(args.device),
        "cpu_count": os.cpu_count(),
        "torch_threads": args.threads,
        "git_commit": git_commit(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "transformers": transformers.__version__,
        },
        "load_average_start": load_average(),
        "sections": {},
    }


def run_section(name: str, settings, args, workdir: Path, results: dict):
    repeats = args.repeats
    if name == "padding":
        return measure_padding(compose_cfg(settings.base_overrides(settings.train_data), workdir))
    if name == "overhead":
        cfg = compose_cfg(settings.base_overrides(settings.train_data), workdir)
        return measure_overhead(cfg, settings.warmup_steps, settings.timed_steps, repeats)
    if name == "limit":
        overhead = results.get("overhead", {})
        used = (dtype_of_precision(overhead["precision"]),) if "framework" in overhead else ()
        peak = measure_peak(torch.device(args.device), settings.matmul_size, repeats, used)
        if "framework" not in overhead:
            return {"peak": peak}
        return {"peak": peak, "utilisation": utilisation(overhead, peak)}
    if name == "probe":
        return measure_probe(settings, workdir / "probe", repeats, args.threads)
    if name == "memory":
        return measure_memory(settings.base_overrides(settings.memory_data), workdir / "memory", args.threads)
    if name == "sweep":
        return measure_sweep(settings, workdir / "sweep", repeats, args.threads)
    if name == "peer":
        return measure_peer(settings, workdir / "peer", repeats, args.threads)
    if name == "compile":
        return measure_compile(settings, workdir / "compile", repeats, args.threads)
    return measure_mfu(settings, workdir / "mfu", repeats, results.get("limit", {}).get("peak"))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    quiet()
    torch.set_num_threads(args.threads)
    keys = ("model", "weak_model", "batch_size", "timed_steps", "warmup_steps", "mfu_model", "mfu_length")
    choices = {k: getattr(args, k) for k in keys}
    settings = settings_for(args.quick, args.device, **choices)
    settings.random_init, settings.model_type, settings.extra = args.random_init, args.model_type, args.extra
    out = args.out or ROOT / "bench" / "results" / f"{args.device}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {"meta": metadata(args, settings.mode)}
    wanted = args.sections.split(",")
    with tempfile.TemporaryDirectory(prefix="w2s-bench-") as tmp:
        for name in (n for n in SECTION_ORDER if n in wanted):
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            start, cpu, load = time.perf_counter(), process_and_children_cpu(), load_average()
            results[name] = run_section(name, settings, args, Path(tmp), results)
            results["meta"]["sections"][name] = {
                "seconds": time.perf_counter() - start,
                "cpu_seconds": process_and_children_cpu() - cpu,
                "load_average_before": load,
                "load_average_after": load_average(),
            }
            # Written after every section, so a failure later keeps what was measured.
            out.write_text(json.dumps(results, indent=2))
    print(render(results))
    print(f"\nwritten to {out}")
    return results


if __name__ == "__main__":
    main()
