"""Strategies beyond Lightning's own."""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import FSDPStrategy


class CPUFSDPStrategy(FSDPStrategy):
    """PyTorch FSDP on CPU processes (gloo), which torch supports when told the device and which
    Lightning refuses (its accelerator check names its own class only, and it passes no device on
    the CPU). It exists to prove the sharded path where no GPU is: the tests and `trainer=fsdp_cpu`
    run it; GPU runs use trainer=fsdp."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        kwargs = dict(self.kwargs)
        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            kwargs.pop("auto_wrap_policy", None)  # predict after fit: the units fit made stay as they are
        return FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **kwargs,
        )
