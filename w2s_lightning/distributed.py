"""Data parallelism that splits the work instead of repeating it. Under DDP, FSDP or DeepSpeed every
rank runs the whole pipeline; within a stage each rank takes its share of every batch, and what a
stage produces (predictions, validation scores, a loss's batch statistic) is gathered so that
every rank continues with the same numbers a single process would have. Only rank 0 writes: the
stage cache, results.json, the run's other files and the dashboards.

Nothing here imports torch: the cache and the command line ask `rank()` before torch is loaded, and
a process group can only exist once something else has imported it."""

from __future__ import annotations

import os
import sys


def _group():
    """torch.distributed when a process group is up, else None."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def world_size() -> int:
    if dist := _group():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    """This process's global rank: from the process group once it exists, else from the launcher's
    environment (torchrun and Lightning's own launcher set RANK or LOCAL_RANK, srun SLURM_PROCID), so
    a process started as rank 1 knows before its first collective that it must not write."""
    if dist := _group():
        return dist.get_rank()
    if world_size() <= 1:
        return 0
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    local = int(os.environ.get("LOCAL_RANK", 0))
    return int(os.environ.get("NODE_RANK", 0)) * int(os.environ.get("LOCAL_WORLD_SIZE", 1)) + local


def is_leader() -> bool:
    """True in the process that writes (the only process of a plain run)."""
    return rank() == 0


def share(batch: list[int]) -> list[int]:
    """This rank's part of one batch of dataset indices: every `world_size`-th example, so each rank
    gets lengths like the whole length-grouped batch (same padding saving, balanced steps). A rank
    whose part is empty (a last batch smaller than the world) gets a stand-in, index `~i`, which the
    dataset serves as example i and the system gives no weight: every rank must take every step."""
    size = world_size()
    if size <= 1:
        return batch
    part = batch[rank() :: size]
    return part if part else [~batch[0]]


def gather(tensor):
    """The concatenation over ranks (in rank order) of each rank's `tensor`, whose first dimensions
    may differ; `tensor` itself outside a process group."""
    dist = _group()
    if dist is None or dist.get_world_size() == 1:
        return tensor
    import torch

    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[: int(n.item())] for part, n in zip(parts, sizes)])


def agree(decision):
    """Rank 0's `decision` on every rank (each rank passes its own; only rank 0's counts), so that
    a choice one process made, such as a cache hit, is the choice of all; each rank's own value
    outside a process group."""
    dist = _group()
    if dist is None or dist.get_world_size() == 1:
        return decision
    box = [decision]
    dist.broadcast_object_list(box, src=0)
    return box[0]
