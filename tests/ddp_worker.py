"""One rank of a data-parallel stage, started by tests/test_distributed.py once per process with
the environment a launcher (torchrun, srun) gives: LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT.

    python -m tests.ddp_worker OUT STRATEGY LOSS [OVERRIDE ...]

Trains the strong model of the tiny config on split B through `stages.fit_predict`, the function
every pipeline stage uses, and writes what the test compares into OUT: the dataset indices this
rank trained on, the loss's batch thresholds, and (rank 0) the stage's predictions and weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from tests.helpers import compose_cfg
from w2s_lightning import distributed
from w2s_lightning.cache import StageCache
from w2s_lightning.data.splits import make_splits
from w2s_lightning.models.system import ClassifierSystem
from w2s_lightning.stages import fit_predict


def main(out: Path, strategy: str, loss_name: str, *overrides: str) -> None:
    world = distributed.world_size()
    trainer = ["trainer=ddp_cpu", f"trainer.devices={world}"] if world > 1 else ["trainer=cpu"]
    if strategy == "fsdp":
        trainer += [
            "~trainer.strategy",
            "+trainer.strategy._target_=w2s_lightning.strategies.CPUFSDPStrategy",
            "+trainer.strategy.process_group_backend=gloo",
        ]
    cfg = compose_cfg(out / "cfg", *trainer, f"loss={loss_name}", "trainer.precision=32-true", *overrides)
    with open_dict(cfg):
        cfg.save_weights = True
    splits = make_splits(instantiate(cfg.dataset.loader, _partial_=True)(), cfg.dataset, cfg.seed)
    train, test = splits.b, splits.test
    spec = cfg.strong_model.copy()
    # A batch size that leaves one example for the last batch, so one rank trains on a stand-in.
    spec.batch_size = next(b for b in range(8, 40) if len(train) % b == 1)

    seen, thresholds = [], []
    fit_step = ClassifierSystem.training_step

    def training_step(self, batch, batch_idx):
        seen.append(batch["index"].tolist())
        return fit_step(self, batch, batch_idx)

    ClassifierSystem.training_step = training_step
    loss = instantiate(cfg.loss)
    if loss.needs_batch_context:
        context = loss.batch_context

        def batch_context(probs, target):
            found = context(probs, target)
            thresholds.append(float(found["threshold"]))
            return found

        loss.batch_context = batch_context

    cache = StageCache(out / "cache")

    def compute(workdir: Path) -> dict:
        targets = train["label"].to_numpy().astype(np.float32)
        val = splits.val
        return fit_predict(
            cfg, spec, "strong_model", "ceiling", train.drop(columns="label"), targets, loss,
            val.drop(columns="label"), val["label"].to_numpy().astype(np.float32),
            {"test": test.drop(columns="label")}, workdir, [],
        )  # fmt: skip

    result = cache.run("ceiling", "k", compute)
    rank = distributed.rank()
    (out / f"rank{rank}.json").write_text(
        json.dumps({"seen": seen, "thresholds": thresholds, "n_train": len(train), "batch_size": spec.batch_size})
    )
    if rank == 0:
        weights = torch.load(result.path / "weights.pt")
        torch.save(weights, out / "weights.pt")
        (out / "test.parquet").write_bytes((result.path / "test.parquet").read_bytes())
        test[["id"]].to_parquet(out / "test_ids.parquet")
        (out / "cache_entries.json").write_text(
            json.dumps(sorted(p.name for p in (out / "cache").glob("*/*") if p.is_dir()))
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:])
