"""The machine's limit: a large matrix product's FLOP/s, and the share of it that training reaches."""

from __future__ import annotations

import time

import torch

from bench.common import spread, synchronize

# A GPU finishes one large product in about a millisecond: time enough of them to dwarf the clock's jitter.
PRODUCTS_PER_REPEAT = {"cpu": 3, "cuda": 50}


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """FLOP/s of back-to-back n×n products, after one untimed product."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    products = PRODUCTS_PER_REPEAT[device.type]
    start = time.perf_counter()
    for _ in range(products):
        a @ b
    synchronize(device)
    return 2 * n**3 * products / (time.perf_counter() - start)


def measure_peak(device: torch.device, n: int, repeats: int, bf16: bool) -> dict:
    """float32 always; bfloat16 too when training computes in it."""
    dtypes = {"float32": torch.float32}
    if bf16:
        dtypes["bfloat16"] = torch.bfloat16
    peaks = {name: spread([matmul_flops(device, dtype, n) for _ in range(repeats)]) for name, dtype in dtypes.items()}
    return {
        "matrix_size": n,
        "matmul_flops_per_s": peaks,
        # float32 products on CUDA use TF32 tensor cores only when this is on (torch's default: off).
        "cuda_tf32": bool(torch.backends.cuda.matmul.allow_tf32) if device.type == "cuda" else None,
    }


def utilisation(overhead: dict, peak: dict) -> dict:
    """Training FLOP/s as 6 × parameters × real tokens/s, against the matmul peak of the dtype
    training computes in. An estimate: it counts backward as twice forward for every weight
    (frozen ones need no weight gradient), charges embeddings as if they were matmuls, and
    ignores attention's sequence-length term and the work spent on padding."""
    params = overhead["parameters"]
    reference = "bfloat16" if overhead["precision"].startswith("bf16") else "float32"
    peak_flops = peak["matmul_flops_per_s"][reference]["median"]
    result = {"reference_dtype": reference, "peak_flops_per_s": peak_flops}
    for loop in ("framework", "bare"):
        tokens = overhead[loop]["real_tokens_per_s"]["median"]
        achieved = 6 * params["total"] * tokens
        without_embeddings = 6 * (params["total"] - params["embedding"]) * tokens
        result[loop] = {
            "flops_per_s": achieved,
            "utilisation": achieved / peak_flops,
            "flops_per_s_without_embeddings": without_embeddings,
            "utilisation_without_embeddings": without_embeddings / peak_flops,
        }
    return result
