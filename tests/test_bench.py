"""bench/run.py end to end in quick mode: it runs and writes every figure it promises, with
sane types. Timings are never compared with thresholds: they depend on the machine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .helpers import ROOT

# The quick run takes about a minute and a half on a busy 2-core machine.
pytestmark = pytest.mark.slow

SECTIONS = {"meta", "padding", "overhead", "limit", "memory", "sweep"}


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
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "framework/bare throughput" in proc.stdout
    return json.loads(out.read_text())


def test_quick_run_writes_every_section(results):
    assert set(results) == SECTIONS
    meta = results["meta"]
    assert meta["mode"] == "quick" and meta["torch_threads"] == 1
    assert set(meta["sections"]) == SECTIONS - {"meta"}


def test_overhead_compares_the_same_training_both_ways(results):
    o = results["overhead"]
    for loop in ("framework", "bare"):
        for key in ("seconds", "examples_per_s", "real_tokens_per_s", "padded_tokens_per_s"):
            check_spread(o[loop][key])
    check_spread(o["ratio_framework_over_bare"])
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
    check_spread(s["wall_seconds"]["cold"])
    check_spread(s["wall_seconds"]["warm"])
    ref = s["without_cache"]
    assert s["cold"]["trainings"] == ref["minimum"] < ref["per_pair"] <= ref["no_cache"]
    assert s["warm"]["trainings"] == 0
    assert s["warm"]["reused"] == 3 * s["warm"]["done"]


def test_limit_and_memory(results):
    limit = results["limit"]
    check_spread(limit["peak"]["matmul_flops_per_s"]["float32"])
    for loop in ("framework", "bare"):
        assert is_positive(limit["utilisation"][loop]["flops_per_s"])
        assert is_positive(limit["utilisation"][loop]["utilisation_without_embeddings"])
    stages = results["memory"]["stages"]
    assert set(stages) == {"weak", "ceiling", "student"}
    for row in stages.values():
        assert is_positive(row["peak_rss_mib"]) and is_positive(row["rss_before_mib"]) and is_positive(row["seconds"])
