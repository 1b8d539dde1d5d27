"""The precision a trainer preset runs in when it leaves the choice to the hardware.

`conf/trainer/cpu.yaml` sets `precision: ${w2s.precision:${.accelerator}}`; the resolver returns
`bf16-mixed` where bfloat16 matrix products run natively and `32-true` elsewhere:

- CPU: x86 cores with AMX-BF16 tiles (`/proc/cpuinfo` flag `amx_bf16`: Sapphire Rapids and
  later). Elsewhere torch still runs bf16 autocast, but slower than float32, also on cores with
  AVX512-BF16 alone (see CPU_BF16_FLAGS).
- CUDA: devices that compute in bf16 natively (Ampere and later, recent ROCm), as torch reports
  without counting emulation.

An explicit value (`trainer.precision=32-true`, `bf16-mixed`, ...) replaces the resolver. The
resolved string is what Lightning, the stage keys and results.json see, never a placeholder:
two machines that resolve differently never share a cache entry.

The CPU check reads one file and never imports torch, so composing or printing a config stays
fast; the CUDA check needs torch, which a run on a GPU imports anyway."""

from __future__ import annotations

import functools
from pathlib import Path

BF16 = "bf16-mixed"
FP32 = "32-true"
# x86 flags under which torch's bf16 matrix products beat float32. AMX only: with oneDNN capped
# at AVX512-BF16 (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16, torch 2.13, on an AMX machine) a 2048^2 bf16
# product ran at 0.64x float32 and MiniLM's features at 0.74x; with AMX at 6.3x and 3.0x.
CPU_BF16_FLAGS = frozenset({"amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")
CUDA_ACCELERATORS = ("gpu", "cuda")


@functools.lru_cache(maxsize=4)
def cpu_flags(path: Path = CPUINFO) -> frozenset[str]:
    """The first processor's feature flags; empty where the file is absent (macOS, Windows)."""
    try:
        with open(path) as f:
            for line in f:
                # x86 writes "flags", ARM "Features"; every processor lists the same set.
                name, _, value = line.partition(":")
                if name.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16(flags: frozenset[str]) -> bool:
    return bool(flags & CPU_BF16_FLAGS)


@functools.lru_cache(maxsize=1)
def cuda_bf16() -> bool | None:
    """Whether the visible CUDA device computes in bf16 natively; None without a CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        # Emulated bf16 (pre-Ampere) runs, but slower than float32.
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.4 has no such argument and counts native support only
        return bool(torch.cuda.is_bf16_supported())


def choose(accelerator: str, cpu_native: bool, cuda_native: bool | None) -> str:
    """The precision for `accelerator` given what the hardware runs natively (`cuda_native`:
    None when no CUDA device is visible). `auto` follows Lightning's own choice: CUDA when a
    device is visible, else the CPU. Other accelerators (MPS, TPU) keep float32."""
    accelerator = str(accelerator).lower()
    if accelerator == "auto":
        accelerator = "cpu" if cuda_native is None else "cuda"
    if accelerator == "cpu":
        return BF16 if cpu_native else FP32
    if accelerator in CUDA_ACCELERATORS:
        # None: no device to ask (a config printed or composed on a login node); the run itself
        # resolves again where its GPU is, so the preset's usual bf16 is the honest answer here.
        return FP32 if cuda_native is False else BF16
    return FP32


def resolve(accelerator: str = "cpu") -> str:
    """The `w2s.precision` resolver: `${w2s.precision:${.accelerator}}`."""
    accelerator = str(accelerator).lower()
    cuda = cuda_bf16() if accelerator in (*CUDA_ACCELERATORS, "auto") else None
    return choose(accelerator, cpu_bf16(cpu_flags()), cuda)
