"""Model FLOPs utilisation on a GPU (`--device cuda` only): a 0.5B student (random-init
qwen2_5_0_5b by default) trained through w2s-lightning in bf16-mixed on sequences of a realistic
length (512 tokens, no padding), with its FLOPs per step counted by torch on the real model and
batch. MFU is achieved FLOP/s over the device's bf16 peak: the datasheet's dense figure where the
device is known, and the matmul peak measured by the limit section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.common import compose_cfg, spread
from bench.flops import step_flops
from bench.limit import measure_peak
from bench.modes import MINILM_VOCAB, Settings
from bench.throughput import Workload, count_parameters, run_framework
from w2s_lightning.data.batches import EncodedExamples
from w2s_lightning.models.backbone import load_config, load_tokenizer

SKIPPED = (
    "GPU MFU needs --device cuda (a 0.5B student in bf16 at 512 tokens); on a CPU the limit "
    "section gives training FLOP/s against the matmul peak instead"
)
# Dense bf16 tensor-core peaks from NVIDIA's datasheets (no sparsity), by device-name fragment,
# most specific first.
DATASHEET_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100", 989.4e12),
    ("H200", 989.4e12),
    ("GH200", 989.4e12),
    ("A100", 312e12),
    ("L40S", 362.05e12),
)
# Token ids above MiniLM's special tokens ([PAD] 0 … [MASK] 103 and the unused range), so no
# text looks padded or special.
FIRST_WORD_ID = 1000


def datasheet_peak(name: str) -> float | None:
    return next((flops for fragment, flops in DATASHEET_BF16 if fragment in name), None)


def synthetic_examples(n: int, length: int, seed: int) -> EncodedExamples:
    """Texts of exactly `length` tokens: no padding, so every counted FLOP is useful work."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(FIRST_WORD_ID, MINILM_VOCAB, size=(n, length)).tolist()
    return EncodedExamples(ids, rng.integers(0, 2, size=n).astype(np.float32))


def analytic_flops(config, parameters: dict, tokens: int, length: int) -> float:
    """6 × non-embedding parameters × tokens, plus attention's score and value products
    (forward 4 × layers × hidden × length per token, ×3 with backward): a cross-check."""
    text = config.get_text_config()
    dense = 6 * (parameters["total"] - parameters["embedding"]) * tokens
    attention = 12 * text.num_hidden_layers * text.hidden_size * length * tokens
    return float(dense + attention)


def measure_mfu(settings: Settings, workdir: Path, repeats: int, peak: dict | None) -> dict:
    if settings.device != "cuda":
        return {"skipped": SKIPPED}
    return run_mfu(settings, workdir, repeats, peak, torch.device("cuda"))


def run_mfu(settings: Settings, workdir: Path, repeats: int, peak: dict | None, device: torch.device) -> dict:
    """The measurement itself; `measure_mfu` runs it on CUDA only (a CPU run of a small model is
    how its arithmetic was checked without a GPU)."""
    cfg = compose_cfg(settings.mfu_overrides(), workdir)
    spec = cfg.strong_model
    warmup, timed = settings.mfu_warmup_steps, settings.mfu_steps
    tokenizer = load_tokenizer(spec)
    examples = synthetic_examples((warmup + timed) * spec.batch_size, settings.mfu_length, cfg.seed)
    work = Workload(cfg, examples, tokenizer.pad_token_id, warmup, timed)
    runs = [run_framework(work) for _ in range(repeats)]
    precision = runs[0].precision
    micro = spec.micro_batch_size or spec.batch_size
    batch = next(iter(work.loader()))
    flops_per_step = step_flops(runs[-1].model, batch, micro, precision)
    parameters = count_parameters(runs[-1].model)
    tokens_per_step = spec.batch_size * settings.mfu_length
    achieved = [flops_per_step * timed / run.seconds for run in runs]
    if peak is None or "bfloat16" not in peak["matmul_flops_per_s"]:
        peak = measure_peak(device, 8192 if device.type == "cuda" else 1024, repeats, ("bfloat16",))
    measured = peak["matmul_flops_per_s"]["bfloat16"]["median"]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    nominal = datasheet_peak(device_name)
    result = {
        "model": spec.name,
        "device_name": device_name,
        "precision": precision,
        "sequence_length": settings.mfu_length,
        "batch_size": spec.batch_size,
        "micro_batch_size": micro,
        "warmup_steps": warmup,
        "timed_steps": timed,
        "repeats": repeats,
        "parameters": parameters,
        "flops_per_step": flops_per_step,
        "flops_per_step_analytic": analytic_flops(load_config(spec), parameters, tokens_per_step, settings.mfu_length),
        "tokens_per_s": spread([tokens_per_step * timed / run.seconds for run in runs]),
        "flops_per_s": spread(achieved),
        "peak_bf16_measured": measured,
        "mfu_vs_measured_peak": spread([a / measured for a in achieved]),
        "peak_bf16_datasheet": nominal,
    }
    if device.type == "cuda":
        result["peak_cuda_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if nominal:
        result["mfu"] = spread([a / nominal for a in achieved])
    return result
