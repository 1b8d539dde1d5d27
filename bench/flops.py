"""Floating-point work of training steps, counted by torch (`torch.utils.flop_counter`) on the
real model and batches instead of estimated from the parameter count: embedding lookups cost no
FLOPs there, attention's products do, and padded positions count because they are computed.
The counter sees matrix products and convolutions, which is what a matmul peak measures."""

from __future__ import annotations

import contextlib

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from bench.common import digest
from w2s_lightning.models.system import MODEL_INPUTS


def _count_cpu_flash_attention() -> None:
    """torch counts the CUDA attention kernels but not the CPU flash kernel that SDPA picks for
    some shapes, which would leave attention's products out on a CPU: same formula, CPU op."""
    aten = torch.ops.aten
    forward_op = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward_op = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward_op is None or backward_op is None or forward_op in flop_counter.flop_registry:
        return

    @register_flop_formula(forward_op)
    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(backward_op)
    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_count_cpu_flash_attention()

# A few steps give FLOPs per padded token to within attention's length term, which these steps
# share with the rest of the window; counting every step would cost another training run.
SAMPLE_STEPS = 4


def autocast_for_precision(precision: str, device: torch.device):
    """The autocast Lightning uses for `precision` (its resolved name, e.g. "bf16-mixed")."""
    if precision.startswith("bf16-mixed"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16-mixed"):
        return torch.autocast(device.type, dtype=torch.float16)
    if precision in ("32", "32-true", "64", "64-true"):
        return contextlib.nullcontext()
    raise SystemExit(f"the benchmark mirrors 32-true, bf16-mixed and 16-mixed, not precision {precision}")


def dtype_of_precision(precision: str) -> str:
    """The dtype the matrix products of a Lightning precision run in."""
    if precision.startswith("bf16"):
        return "bfloat16"
    if precision.startswith("16"):
        return "float16"
    return "float32"


def step_flops(model: torch.nn.Module, batch: dict, micro: int, precision: str) -> int:
    """Forward and backward FLOPs of one optimizer step on `batch`, micro-batch by micro-batch
    as training runs it (the optimizer's own arithmetic is elementwise and not counted)."""
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    n = batch["target"].shape[0]
    with counter:
        for i in range(0, n, micro):
            inputs = {k: batch[k][i : i + micro].to(device) for k in MODEL_INPUTS if k in batch}
            with autocast_for_precision(precision, device):
                logits = model(**inputs)
            logits.float().sum().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def counted_flops(model: torch.nn.Module, batches: list[dict], micro: int, precision: str) -> dict:
    """FLOPs of the sampled steps and the padded tokens they computed."""
    flops = [step_flops(model, batch, micro, precision) for batch in batches]
    padded = [batch["attention_mask"].numel() if "attention_mask" in batch else 0 for batch in batches]
    return {
        "method": "torch.utils.flop_counter.FlopCounterMode, forward + backward",
        "sampled_steps": len(batches),
        "sampled_batches": digest([b["index"].tolist() for b in batches]),
        "flops": sum(flops),
        "padded_tokens": sum(padded),
        "flops_per_padded_token": sum(flops) / max(1, sum(padded)),
    }
