"""`<slot>.compile=true`: the backbone runs through torch.compile, its stages are cached apart
from the eager ones, and the settings where it cannot work fail at start-up with the fix. Dynamo
traces the model here with its `eager` backend: inductor's code generation costs about a minute
on 2 cores, and bench/run.py --sections compile times it."""

from __future__ import annotations

import json

import pytest
import torch
from torch._dynamo.utils import counters

from bench.compile import VARIANTS, workload
from w2s_lightning import checks
from w2s_lightning.checks import check_config
from w2s_lightning.errors import ConfigError
from w2s_lightning.pipeline import run

from .helpers import compose_cfg


def results(cfg) -> dict:
    run(cfg)
    with open(f"{cfg.paths.output_dir}/results.json") as f:
        return json.load(f)


@pytest.fixture
def eager_backend(monkeypatch):
    """Module.compile with dynamo's `eager` backend: the graphs are captured, then run as traced.
    That backend builds no kernels, so the start-up check finds a compiler whatever the host has."""
    real = torch.nn.Module.compile
    monkeypatch.setattr(checks, "cpp_compiler", lambda: "/usr/bin/g++")
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: real(self, **{**kw, "backend": "eager"}))
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_a_compiled_backbone_trains_and_is_cached_apart(tmp_path, eager_backend):
    plain = results(compose_cfg(tmp_path / "plain"))
    assert not counters["frames"]  # nothing compiled unless asked
    compiled = results(compose_cfg(tmp_path / "compiled", "weak_model.compile=true"))
    assert counters["frames"]["ok"] > 0  # dynamo captured the weak model's backbone
    # The eager backend runs the captured graphs op for op: the same numbers, under another key.
    assert compiled["weak"]["acc"] == plain["weak"]["acc"]
    assert compiled["weak"]["key"] != plain["weak"]["key"]
    assert compiled["ceiling"]["key"] == plain["ceiling"]["key"]  # the strong model is not compiled


@pytest.mark.parametrize("trainer", ["fsdp_cpu", "deepspeed"])
def test_compile_under_a_sharding_strategy_fails_at_start_up(tmp_path, trainer):
    cfg = compose_cfg(tmp_path, f"trainer={trainer}", "strong_model.compile=true")
    with pytest.raises(
        ConfigError, match=r"strong_model.compile=true under the \w+ strategy.*fix: set strong_model.compile=false"
    ):
        check_config(cfg)


def test_compile_on_a_cpu_without_a_cpp_compiler_fails_at_start_up(tmp_path, monkeypatch):
    cfg = compose_cfg(tmp_path, "weak_model.compile=true")
    monkeypatch.delenv("CXX", raising=False)
    on_path = {"clang++": "/usr/bin/clang++"}  # a host with clang++ alone passes
    monkeypatch.setattr(checks.shutil, "which", lambda name: on_path.get(name))
    check_config(cfg)
    on_path.clear()
    with pytest.raises(ConfigError, match=r"needs a C\+\+ compiler.*or set weak_model.compile=false"):
        check_config(cfg)
    monkeypatch.setenv("CXX", "/nowhere/g++")
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        check_config(cfg)


def test_the_benchmark_compares_each_compiled_run_with_the_eager_one(tmp_path, monkeypatch):
    """bench/compile.py's figures come from its runs: one per variant and repeat, the compiled
    ones with compile on and inductor's cache in a folder of the repeat's own."""
    calls = []

    def fake_run(stages, workdir, threads, overrides, env=None):
        compiled = "strong_model.compile=true" in overrides
        calls.append((compiled, (env or {}).get("TORCHINDUCTOR_CACHE_DIR")))
        seconds = {False: 10.0, True: 30.0 if len(calls) % 3 == 2 else 12.0}[compiled]
        phases = {"features": {"seconds": seconds / 2}, "total": {"seconds": seconds}}
        record = {"model": "m", "n_train": 8, "seconds": seconds, "cpu_seconds": seconds, "phases": phases}
        return {"stages": {"ceiling": record}, "seconds": seconds + 5, "cpu_seconds": seconds + 5}

    monkeypatch.setattr("bench.compile.run_stages", fake_run)
    result = workload(["logger=none"], tmp_path, repeats=2, threads=1)
    assert [c for c, _ in calls] == [False, True, True] * 2
    assert calls[0][1] is None and calls[1][1] == calls[2][1] != calls[4][1]  # one fresh cache per repeat
    assert set(VARIANTS) <= set(result)
    assert result["compiled_cold_cache"]["time_vs_eager"] == pytest.approx(35 / 15)
    assert result["compiled_warm_cache"]["time_vs_eager"] == pytest.approx(17 / 15)
    assert result["eager"]["features_seconds"]["median"] == 5.0
