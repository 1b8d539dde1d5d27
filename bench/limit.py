"""The machine's limit: a large matrix product's FLOP/s in every precision the device runs fast,
and the share of the peak of the precision training used that training reaches."""

from __future__ import annotations

import torch

from bench.common import Clock, spread, synchronize
from bench.flops import dtype_of_precision
from w2s_lightning.precision import cpu_flags

# A GPU finishes one large product in about a millisecond: time enough of them to dwarf the clock's jitter.
PRODUCTS_PER_REPEAT = {"cpu": 3, "cuda": 50}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# CPU instructions that run bfloat16 products natively; without them torch converts and is slower than float32.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def fast_dtypes(device: torch.device) -> dict[str, str]:
    """The dtypes worth a peak on this device, each with why."""
    found = {"float32": "always"}
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            found["bfloat16"] = "CUDA device supports bf16"
        found["float16"] = "CUDA"
    else:
        flags = sorted(cpu_flags() & set(CPU_BF16_FLAGS))
        if flags:
            found["bfloat16"] = f"CPU flags {', '.join(flags)}"
    return found


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int) -> tuple[float, float]:
    """FLOP/s of back-to-back n×n products after one untimed product: per wall second and per CPU
    second of this process (all its threads)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    products = PRODUCTS_PER_REPEAT[device.type]
    clock = Clock().start()
    for _ in range(products):
        a @ b
    synchronize(device)
    wall, cpu = clock.read()
    work = 2 * n**3 * products
    return work / wall, work / max(cpu, 1e-9)


def measure_peak(device: torch.device, n: int, repeats: int, also: tuple[str, ...] = ()) -> dict:
    """Every fast dtype of the device, and `also` (the dtype training used, fast or not)."""
    reasons = fast_dtypes(device)
    for name in also:
        reasons.setdefault(name, "the precision training used")
    wall, cpu = {}, {}
    for name in reasons:
        runs = [matmul_flops(device, DTYPES[name], n) for _ in range(repeats)]
        wall[name] = spread([w for w, _ in runs])
        cpu[name] = spread([c for _, c in runs])
    return {
        "matrix_size": n,
        "matmul_flops_per_s": wall,
        # Per CPU second: on a shared machine the wall figure also counts time spent waiting for a core.
        "matmul_flops_per_cpu_s": cpu,
        "dtypes": reasons,
        # float32 products on CUDA use TF32 tensor cores only when this is on (torch's default: off).
        "cuda_tf32": bool(torch.backends.cuda.matmul.allow_tf32) if device.type == "cuda" else None,
    }


def utilisation(overhead: dict, peak: dict) -> dict:
    """Training FLOP/s, counted by torch on sampled steps of the real model and batches
    (bench/flops.py), against the matmul peak of the dtype training computed in: per wall second
    and per CPU second. The 6 × non-embedding parameters × real tokens estimate stays alongside."""
    params = overhead["parameters"]
    reference = dtype_of_precision(overhead["precision"])
    peak_wall = peak["matmul_flops_per_s"][reference]["median"]
    peak_cpu = peak["matmul_flops_per_cpu_s"][reference]["median"]
    result = {"reference_dtype": reference, "peak_flops_per_s": peak_wall, "peak_flops_per_cpu_s": peak_cpu}
    window = overhead["flops"]["timed_window"]
    for loop in ("framework", "bare"):
        seconds = overhead[loop]["seconds"]["median"]
        cpu_seconds = overhead[loop]["cpu_seconds"]["median"]
        estimate = 6 * (params["total"] - params["embedding"]) * overhead[loop]["real_tokens_per_s"]["median"]
        result[loop] = {
            "flops_per_s": window / seconds,
            "utilisation": window / seconds / peak_wall,
            "flops_per_cpu_s": window / cpu_seconds,
            "utilisation_cpu": window / cpu_seconds / peak_cpu,
            "estimate_6n_flops_per_s": estimate,
            "estimate_6n_utilisation": estimate / peak_wall,
        }
    return result
