"""bench/run.py end to end in quick mode: it runs and writes every figure it promises, with
sane types, and its peer (bench/peer_openai.py) follows openai/weak-to-strong's loop. Timings are
never compared with thresholds: they depend on the machine."""

from __future__ import annotations

import json
import subprocess
import sys

import datasets
import pytest
import torch

from bench import peer_openai
from bench.flops import dtype_of_precision
from bench.limit import fast_dtypes

from .helpers import ROOT

# The quick run uses about 3 CPU minutes; on a 2-core machine at a load average of 15 it took 7.
pytestmark = pytest.mark.slow

SECTIONS = {"meta", "padding", "overhead", "limit", "probe", "memory", "sweep", "peer", "mfu"}
TIMED = ("seconds", "cpu_seconds", "examples_per_s", "examples_per_cpu_s")


def is_positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def is_fraction(x) -> bool:
    return isinstance(x, float) and 0.0 <= x <= 1.0


def check_spread(summary: dict) -> None:
    assert is_positive(summary["median"])
    assert summary["min"] <= summary["median"] <= summary["max"]
    assert len(summary["values"]) >= 1


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "x.json"
    # One torch thread: on a shared 2-core machine two threads stall each other unpredictably.
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--repeats", "1", "--threads", "1"]
    cmd += ["--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "framework/bare throughput" in proc.stdout
    assert "speed-up, their time over ours" in proc.stdout
    assert "MFU: skipped: GPU MFU needs --device cuda" in proc.stdout
    return json.loads(out.read_text())


def test_quick_run_writes_every_section(results):
    assert set(results) == SECTIONS
    meta = results["meta"]
    assert meta["mode"] == "quick" and meta["torch_threads"] == 1
    assert set(meta["sections"]) == SECTIONS - {"meta"}
    for timing in meta["sections"].values():
        assert is_positive(timing["seconds"]) and is_positive(timing["cpu_seconds"])


def test_overhead_compares_the_same_training_both_ways(results):
    o = results["overhead"]
    for loop in ("framework", "bare"):
        for key in (*TIMED, "real_tokens_per_s", "padded_tokens_per_s", "real_tokens_per_cpu_s", "fit_seconds"):
            check_spread(o[loop][key])
    check_spread(o["ratio_framework_over_bare"])
    check_spread(o["ratio_framework_over_bare_cpu"])
    assert o["timed_steps"] == 64
    flops = o["flops"]
    assert flops["sampled_steps"] >= 1 and is_positive(flops["flops_per_padded_token"])
    assert is_positive(flops["timed_window"])
    counts = o["timed_counts"]
    assert 0 < counts["real_tokens"] <= counts["padded_tokens"]
    assert o["same_batches"] is True
    # Same seed, same arithmetic, same batches: the weights end up equal.
    assert o["max_param_diff"] <= 1e-6
    assert o["torch_threads"] == [1]


def test_padding_fractions(results):
    p = results["padding"]
    for subset in ("dataset", "split_b"):
        r = p[subset]
        for key in ("train_grouped", "train_shuffled", "inference_sorted", "compute_saved_by_grouping"):
            assert is_fraction(r[key]), (subset, key, r[key])
        assert r["train_grouped"] <= r["train_shuffled"]


def test_sweep_counts_trainings_cold_and_warm(results):
    s = results["sweep"]
    for kind in ("cold", "warm"):
        check_spread(s["wall_seconds"][kind])
        check_spread(s["cpu_seconds"][kind])
    ref = s["without_cache"]
    assert s["cold"]["trainings"] == ref["minimum"] < ref["per_pair"] <= ref["no_cache"]
    assert s["warm"]["trainings"] == 0
    assert s["warm"]["reused"] == 3 * s["warm"]["done"]


def test_limit_and_memory(results):
    limit = results["limit"]
    peaks = limit["peak"]
    # Every dtype the machine runs fast, and the one training used, per wall and per CPU second.
    used = dtype_of_precision(results["overhead"]["precision"])
    assert set(peaks["matmul_flops_per_s"]) == set(fast_dtypes(torch.device("cpu"))) | {used}
    for dtype in peaks["matmul_flops_per_s"]:
        check_spread(peaks["matmul_flops_per_s"][dtype])
        check_spread(peaks["matmul_flops_per_cpu_s"][dtype])
    util = limit["utilisation"]
    assert util["reference_dtype"] == used
    for loop in ("framework", "bare"):
        for key in ("flops_per_s", "utilisation", "flops_per_cpu_s", "utilisation_cpu", "estimate_6n_utilisation"):
            assert is_positive(util[loop][key]), (loop, key)
    stages = results["memory"]["stages"]
    assert set(stages) == {"weak", "ceiling", "student"}
    for row in stages.values():
        assert is_positive(row["peak_rss_mib"]) and is_positive(row["rss_before_mib"]) and is_positive(row["seconds"])
        assert is_positive(row["cpu_seconds"]) and is_positive(row["process_seconds"])
        assert {"setup", "fit", "train_steps", "validation", "predict", "total"} <= set(row["phases"])


def test_probe_path_times_features_and_head(results):
    p = results["probe"]
    assert p["model"] == "minilm_l6_probe"
    for key in ("seconds", "cpu_seconds", "setup_seconds", "setup_cpu_seconds"):
        check_spread(p["process"][key])
    stages = p["stages"]
    assert set(stages) == {"weak", "ceiling", "student"}
    for row in stages.values():
        check_spread(row["seconds"])
        check_spread(row["cpu_seconds"])
        for name in ("setup", "fit", "train_steps", "validation", "predict", "total"):
            check_spread(row["phases"][name]["seconds"])
    # The ceiling runs the frozen backbone over B, validation and test; the student reads those
    # features from the stage cache, as in the pipeline.
    check_spread(stages["ceiling"]["phases"]["features"]["cpu_seconds"])
    assert "features" not in stages["student"]["phases"]
    assert "features" not in stages["weak"]["phases"]


def test_peer_section_compares_the_same_work(results):
    p = results["peer"]
    for loop in ("theirs", "ours_grouped", "ours_shuffled"):
        for key in TIMED:
            check_spread(p["training"][loop][key])
    for side in ("theirs", "ours"):
        for key in TIMED:
            check_spread(p["inference"][side][key])
        check_spread(p["experiment"][side]["seconds"])
        check_spread(p["experiment"][side]["cpu_seconds"])
    for figure in ("training_grouped", "training_shuffled", "inference", "experiment"):
        check_spread(p["speedup"][figure]["wall"])
        check_spread(p["speedup"][figure]["cpu"])
    b = p["batches"]
    # Their loop read our shuffled loader's batches; our grouped loop regrouped the same examples.
    assert b["same_batches_theirs_and_ours_shuffled"] is True
    assert b["same_examples"] is True and b["same_real_tokens"] is True
    assert b["ours_grouped"]["batches_sha"] != b["ours_shuffled"]["batches_sha"]
    assert b["theirs"]["steps"] == p["training"]["steps"] == p["training"]["examples"] // 32
    # Minibatches of one example: their loop computes no padding.
    assert b["theirs"]["padded_tokens"] == b["theirs"]["real_tokens"]
    assert b["ours_grouped"]["padded_tokens"] <= b["ours_shuffled"]["padded_tokens"]
    ex = p["experiment"]
    assert ex["same_splits"] is True
    assert set(ex["theirs"]["stages"]) == set(ex["ours"]["stages"]) == {"weak", "ceiling", "student"}
    for stage in ("weak", "ceiling", "student"):
        assert 0.0 <= ex["theirs"]["stages"][stage]["test_acc"] <= 1.0
        assert 0.0 <= ex["ours"]["stages"][stage]["acc"] <= 1.0
    # Their filter drops texts over max_length tokens where we cut them: never more examples than ours.
    assert 0 < ex["theirs"]["stages"]["ceiling"]["n_train"] <= ex["data"]["b"]
    assert p["theirs"]["minibatch_size"] == 1 and p["theirs"]["dtype"] == "float32"
    assert p["ours"]["precision"].endswith(("-true", "-mixed"))  # as Lightning resolved it


def test_mfu_is_skipped_on_cpu(results):
    assert "needs --device cuda" in results["mfu"]["skipped"]


TINY_GPT2 = {"model_type": "gpt2", "config": {"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 64}}


def tiny_rows(n: int) -> datasets.Dataset:
    ids = [[5 + (i + j) % 50 for j in range(2 + i % 4)] for i in range(n)]
    return datasets.Dataset.from_dict(
        {"input_ids": ids, "soft_label": [[1.0 - i % 2, float(i % 2)] for i in range(n)], "index": list(range(n))}
    )


def test_peer_reads_batches_in_stored_order_across_epochs_and_drops_the_rest():
    model = peer_openai.build_model(TINY_GPT2, torch.float32, 0)
    seen = []
    out = peer_openai.train_model(model, tiny_rows(10), 4, 1e-3, 2, 2, torch.device("cpu"), seen=seen)
    # nsteps = 10 · 2 // 4: the data is read in its order, epoch after epoch, never reshuffled.
    assert out["steps"] == 5
    assert seen == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 0, 1), (2, 3, 4, 5), (6, 7, 8, 9)]


def test_peer_model_pools_the_last_non_pad_token_from_a_zero_head():
    model = peer_openai.build_model(TINY_GPT2, torch.float32, 0).eval()
    assert not model.score.weight.any() and model.score.bias is None
    with torch.no_grad():
        model.score.weight.normal_()
        short = model(torch.tensor([[7, 8, 9]]))
        padded = model(torch.tensor([[7, 8, 9, 0, 0]]))
    # Right padding after a causal model's last token changes nothing.
    torch.testing.assert_close(short, padded)


def test_peer_evaluation_returns_every_example_with_probabilities():
    model = peer_openai.build_model(TINY_GPT2, torch.float32, 0)
    rows = tiny_rows(7).add_column("txt", [f"t{i}" for i in range(7)])
    results = peer_openai.eval_model_acc(model, rows, 3, torch.device("cpu"))
    assert len(results) == 7 and results["txt"] == rows["txt"]
    for probs in results["soft_label"]:
        assert abs(sum(probs) - 1.0) < 1e-5
