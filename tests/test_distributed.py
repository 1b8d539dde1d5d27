"""Data parallelism proved on the CPU: two processes with the gloo backend train one tiny stage,
each on its own half of every batch, and end where one process ends with the same global batch.
The ranks are started as torchrun or srun would start them (tests/ddp_worker.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from w2s_lightning import distributed
from w2s_lightning.data.batches import EncodedExamples, LengthGroupedSampler, inference_loader

from .helpers import ROOT

pytestmark = pytest.mark.slow
# Dropout draws its masks per process, so N processes and one draw different ones: off, to compare.
# Plain SGD: its step is proportional to the gradient, so a wrong weighting of the ranks' shares
# shows in the weights (Adam's normalised step would hide a scale).
SAME = ("strong_model.dropout=0.0", "optimizer._target_=torch.optim.SGD", "strong_model.lr=0.1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, world: int, strategy: str = "ddp", loss: str = "xent", *overrides: str) -> list[dict]:
    """Run the worker as `world` processes; return each rank's record."""
    out.mkdir(parents=True)
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        if world > 1:
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
            env.update(NODE_RANK="0", RANK=str(rank))
        cmd = [sys.executable, "-m", "tests.ddp_worker", str(out), strategy, loss, *overrides]
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    logs = [p.communicate(timeout=600)[0].decode() for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    launch(out, 1, "ddp", "logconf", *SAME)
    return out


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("two") / "run"
    return out, launch(out, 2, "ddp", "logconf", *SAME)


def test_each_rank_trains_on_its_own_half_of_every_batch(ddp):
    _, ranks = ddp
    n, batch_size = ranks[0]["n_train"], ranks[0]["batch_size"]
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == -(-n // batch_size)  # every rank takes every step
    seen = [{i for batch in r["seen"] for i in batch if i >= 0} for r in ranks]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(n))
    for a, b in zip(ranks[0]["seen"], ranks[1]["seen"]):  # halves of each batch, rank 0 the larger
        assert len(a) - sum(i >= 0 for i in b) in (0, 1)
    # The last batch holds one example: the rank without a share trained on a weightless stand-in.
    assert sum(i < 0 for r in ranks for batch in r["seen"] for i in batch) == 1


def test_predictions_cover_every_example_once_in_order(ddp):
    out, _ = ddp
    predicted, ids = pd.read_parquet(out / "test.parquet"), pd.read_parquet(out / "test_ids.parquet")
    assert predicted["id"].tolist() == ids["id"].tolist()
    assert predicted["prob"].notna().all()
    # Rank 0 alone wrote the stage into the cache; rank 1's copy lived outside it.
    assert json.loads((out / "cache_entries.json").read_text()) == ["k"]


def test_two_processes_train_the_model_one_process_trains(single, ddp):
    out, _ = ddp
    one, two = torch.load(single / "weights.pt"), torch.load(out / "weights.pt")
    assert one.keys() == two.keys() and one
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    a, b = pd.read_parquet(single / "test.parquet"), pd.read_parquet(out / "test.parquet")
    np.testing.assert_allclose(b["prob"], a["prob"], atol=1e-4)


def test_logconf_threshold_is_the_whole_batchs(single, ddp):
    _, ranks = ddp
    one = json.loads((single / "rank0.json").read_text())["thresholds"]
    assert len(one) == len(ranks[0]["thresholds"]) == len(ranks[1]["thresholds"])
    # Both ranks use the global quantile, the one a single process computes on the whole batch.
    np.testing.assert_allclose(ranks[0]["thresholds"], ranks[1]["thresholds"], rtol=0, atol=0)
    np.testing.assert_allclose(ranks[0]["thresholds"], one, atol=1e-4)


def test_fsdp_on_cpu_shards_and_trains_the_model_one_process_trains(single, tmp_path):
    out = tmp_path / "fsdp"
    ranks = launch(out, 2, "fsdp", "logconf", *SAME)
    seen = [{i for batch in r["seen"] for i in batch if i >= 0} for r in ranks]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(ranks[0]["n_train"]))
    # Whole weights gathered from the shards, clipped by the norm over all shards, and no gradient
    # left over from the step before: the model one process trains.
    one, two = torch.load(single / "weights.pt"), torch.load(out / "weights.pt")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    np.testing.assert_allclose(
        ranks[0]["thresholds"], json.loads((single / "rank0.json").read_text())["thresholds"], atol=1e-4
    )


def test_share_splits_a_batch_by_rank(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    parts = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        parts.append(distributed.share([5, 6, 7, 8]))
    assert parts == [[5, 8], [6], [7]]
    monkeypatch.setenv("RANK", "2")
    assert distributed.share([4, 9]) == [~4]  # no share: a stand-in for example 4


def test_every_rank_draws_the_same_length_grouped_batches(monkeypatch):
    lengths = np.random.default_rng(0).integers(1, 60, size=101)
    whole = list(LengthGroupedSampler(lengths, 8, seed=3))
    monkeypatch.setenv("WORLD_SIZE", "2")
    shares = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        shares.append(list(LengthGroupedSampler(lengths, 8, seed=3)))
    assert [a + b for a, b in zip(*shares)] != []  # same number of steps
    for batch, a, b in zip(whole, *shares):
        assert sorted(batch) == sorted(i for i in a + b if i >= 0)


def test_a_stand_in_is_served_as_its_example():
    examples = EncodedExamples([[1, 2], [3]], np.array([0.0, 1.0]))
    assert examples[~1] == ([3], 1.0, ~1)
    loader = inference_loader(examples, 4, pad_id=0)
    assert [b["index"].tolist() for b in loader] == [[0, 1]]


def test_the_trainer_leaves_sharding_to_the_batch_samplers(make_cfg):
    from w2s_lightning.stages import make_trainer

    trainer = make_trainer(make_cfg(), logger=False)
    # Lightning's distributed sampler would split the examples and undo the length grouping.
    assert trainer._accelerator_connector.use_distributed_sampler is False


def test_deepspeed_clips_with_train_grad_clip():
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from w2s_lightning.models.system import configure_deepspeed_clip

    strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)  # the config alone: DeepSpeed is not installed here
    strategy.config = {"zero_optimization": {"stage": 3}}
    configure_deepspeed_clip(strategy, 1.0)
    assert strategy.config["gradient_clipping"] == 1.0
    strategy.config = {"gradient_clipping": 0.5}
    configure_deepspeed_clip(strategy, 1.0)
    assert strategy.config["gradient_clipping"] == 0.5  # the user's own DeepSpeed config wins


def test_fsdp_wraps_the_classifier_as_a_unit_of_its_own():
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    from w2s_lightning.models.classifier import Classifier, Encoder, ProbeHead
    from w2s_lightning.stages import wrap_classifier

    strategy = FSDPStrategy(auto_wrap_policy={GPT2Block})
    wrap_classifier(strategy)
    # By isinstance: a Classifier, the frozen Encoder of feature extraction, a probe's head.
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {GPT2Block, Encoder, ProbeHead}
    assert issubclass(Classifier, Encoder)


def test_sharding_strategies_and_their_subclasses_build_the_model_in_configure_model():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from w2s_lightning.stages import sharded
    from w2s_lightning.strategies import CPUFSDPStrategy

    assert sharded(SimpleNamespace(strategy=FSDPStrategy()))
    assert sharded(SimpleNamespace(strategy=CPUFSDPStrategy()))
    assert not sharded(SimpleNamespace(strategy=DDPStrategy()))


@pytest.mark.parametrize("probe", [False, True], ids=["finetuned", "linear-probe"])
def test_train_py_runs_the_recipe_in_two_processes(tmp_path, probe):
    """`python train.py trainer=ddp_cpu`: Lightning starts the second rank by running the same command
    again; every stage trains in both, rank 0 alone writes the cache and the run's files. A linear
    probe's features come from each rank's share on a trainer of their own, gathered."""
    from .helpers import TINY

    env = {**os.environ, "W2S_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "train.py", *TINY, "trainer=ddp_cpu", *(["strong_model.linear_probe=true"] if probe else [])]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    [results] = (tmp_path / "outputs").rglob("results.json")
    record = json.loads(results.read_text())
    assert record["status"] == "done" and record["config"]["trainer.devices"] == 2
    cache = tmp_path / ".cache" / "stages"
    for stage in ("weak", "ceiling", "student"):
        assert len([p for p in (cache / stage).iterdir() if p.is_dir()]) == 1, stage
    assert not list(cache.rglob(".*tmp-*")), "a temporary was left in the cache"
    assert done.stdout.count("weak     epoch 1/1") == 1  # one copy of each line, from rank 0
    if probe:  # B, validation and test, once each, for the ceiling and the student
        assert len([p for p in (cache / "features").iterdir() if p.is_dir()]) == 3


def test_fsdp_keeps_lora_and_gradient_checkpointing_working(tmp_path):
    out = tmp_path / "lora"
    launch(out, 2, "fsdp", "xent", "strong_model.lora.enabled=true", "strong_model.gradient_checkpointing=true")
    weights = torch.load(out / "weights.pt")
    # Built in configure_model under FSDP, the model still trains adapters and the head only.
    assert {n.split(".")[0] for n in weights} == {"backbone", "head"}
    assert all("lora_" in n for n in weights if n.startswith("backbone."))
    predicted, ids = pd.read_parquet(out / "test.parquet"), pd.read_parquet(out / "test_ids.parquet")
    assert predicted["id"].tolist() == ids["id"].tolist() and predicted["prob"].notna().all()


def test_predictions_that_miss_or_repeat_an_example_fail_the_stage():
    from types import SimpleNamespace

    from w2s_lightning.stages import run_predict

    # A batch order that repeats example 1 and never predicts example 2 (as a wrong split across
    # ranks would): the stage stops rather than keep a hole filled with garbage.
    batches = [(torch.tensor([0, 1]), torch.tensor([0.1, 0.2])), (torch.tensor([1]), torch.tensor([0.3]))]
    trainer = SimpleNamespace(predict=lambda system, loader: batches, received_sigterm=False)
    system = SimpleNamespace(device=torch.device("cpu"))
    examples = EncodedExamples([[1], [2], [3]], np.zeros(3))
    with pytest.raises(RuntimeError, match="cover 2 of 3 examples with 3 rows"):
        run_predict(trainer, system, examples, batch_size=2, pad_id=0)
