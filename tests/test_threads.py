"""The `threads` knob: one thread for small work, the process's cores for feature extraction
and large models, an integer forcing a count; each stage's fit and predict run under it and the
previous count comes back afterwards."""

from __future__ import annotations

import os
import subprocess
import sys

import joblib
import pytest
import torch

from w2s_lightning import stages, threads
from w2s_lightning.checks import check_config
from w2s_lightning.config import CONF_DIR, load_model_spec
from w2s_lightning.errors import ConfigError
from w2s_lightning.models.system import ClassifierSystem
from w2s_lightning.pipeline import run
from w2s_lightning.threads import LARGE, SMALL

from .helpers import ROOT


@pytest.mark.parametrize(
    ("setting", "work", "cores", "expected"),
    [
        ("auto", SMALL, 8, 1),
        ("auto", LARGE, 8, 8),
        ("auto", LARGE, 1, 1),
        (3, SMALL, 8, 3),  # an integer forces, whatever the work
        (16, LARGE, 2, 16),
    ],
)
def test_choose(setting, work, cores, expected):
    assert threads.choose(setting, work, cores) == expected


@pytest.mark.parametrize("setting", [0, -1, True, 1.5, "two", None])
def test_choose_refuses_other_settings(setting):
    with pytest.raises(ValueError, match="must be auto or an integer >= 1"):
        threads.choose(setting, SMALL, 2)


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ((16, None, None, 8), 8),  # torch's own default (physical cores) below the affinity
        ((16, 4, None, 8), 4),  # a container's CPU quota
        ((16, None, 2, 8), 2),  # a launcher's share (joblib: cores // n_jobs)
        ((2, None, None, 8), 2),  # taskset
        ((2, None, None, None), 2),
    ],
)
def test_budget_is_the_tightest_limit(limits, expected):
    assert threads.budget(*limits) == expected


@pytest.mark.parametrize(
    ("v2", "v1", "expected"),
    [
        ("max 100000\n", None, None),
        ("150000 100000\n", None, 2),  # 1.5 CPUs of quota: two threads can use it
        ("50000 100000\n", None, 1),
        (None, ("-1", "100000"), None),
        (None, ("400000", "100000"), 4),
        (None, None, None),
    ],
)
def test_cgroup_quota(tmp_path, v2, v1, expected):
    v2_path, v1_paths = tmp_path / "cpu.max", (tmp_path / "quota", tmp_path / "period")
    if v2 is not None:
        v2_path.write_text(v2)
    if v1 is not None:
        for path, text in zip(v1_paths, v1):
            path.write_text(text)
    assert threads.cgroup_cpus(v2_path, v1_paths) == expected


@pytest.mark.parametrize(("value", "expected"), [("3", 3), ("1", 1), ("0", None), ("", None), ("x", None)])
def test_env_threads(value, expected):
    assert threads.env_threads({"OMP_NUM_THREADS": value}) == expected


def test_env_threads_unset():
    assert threads.env_threads({}) is None


@pytest.mark.parametrize(
    ("name", "work"),
    [
        ("scratch_bert_1l", SMALL),
        ("tiny_bert", SMALL),
        ("minilm_l6_probe", SMALL),
        ("minilm_l6", LARGE),
        ("gpt2", LARGE),
    ],
)
def test_catalogue_work(name, work):
    assert threads.work_of(load_model_spec(CONF_DIR / "model" / f"{name}.yaml")) == work


def test_a_joblib_worker_gets_its_share_of_the_cores(monkeypatch):
    """Hydra's joblib launcher runs jobs in loky workers, which joblib gives OMP_NUM_THREADS =
    cores // n_jobs: the limit `threads` reads."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    found = joblib.Parallel(n_jobs=2)(joblib.delayed(threads.env_threads)() for _ in range(2))
    assert found == [max(1, joblib.cpu_count() // 2)] * 2


@pytest.fixture
def cores(monkeypatch):
    """A process allowed 3 cores, torch set to 4 threads; torch's count restored afterwards."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 3)
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def test_use_threads_sets_and_restores(cores):
    with threads.use_threads("auto", SMALL) as count:
        assert count == torch.get_num_threads() == 1
        # Nested work uses the outermost budget, not the 1 thread of the block it sits in.
        with threads.use_threads("auto", LARGE) as inner:
            assert inner == torch.get_num_threads() == 3
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 4
    with threads.use_threads(2, SMALL):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 4


def test_use_threads_restores_after_an_error_and_a_change_inside(cores):
    with pytest.raises(RuntimeError, match="boom"), threads.use_threads("auto", LARGE):
        torch.set_num_threads(2)  # as Lightning's DDP launcher does
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 4
    assert threads._local.budget is None


def counts_seen(monkeypatch) -> dict[str, set[int]]:
    """Torch's thread count during training steps, predictions and feature extraction."""
    seen = {"fit": set(), "predict": set(), "features": set()}
    real_step, real_predict = ClassifierSystem.training_step, stages.run_predict

    def step(self, *args, **kwargs):
        seen["fit"].add(torch.get_num_threads())
        return real_step(self, *args, **kwargs)

    def predict(trainer, system, *args, **kwargs):
        seen["features" if system.predict_features else "predict"].add(torch.get_num_threads())
        return real_predict(trainer, system, *args, **kwargs)

    monkeypatch.setattr(ClassifierSystem, "training_step", step)
    monkeypatch.setattr(stages, "run_predict", predict)
    return seen


@pytest.mark.parametrize(
    ("setting", "small_params", "expected"),
    [
        ("threads=auto", threads.SMALL_PARAMS, {"fit": {1}, "predict": {1}, "features": {3}}),
        # Every model counts as large: the from-scratch weak model then trains on all 3 cores;
        # a probe's head stays small.
        ("threads=auto", 0, {"fit": {1, 3}, "predict": {1, 3}, "features": {3}}),
        ("threads=2", threads.SMALL_PARAMS, {"fit": {2}, "predict": {2}, "features": {2}}),
    ],
)
def test_stages_run_under_the_chosen_count(make_cfg, monkeypatch, cores, setting, small_params, expected):
    monkeypatch.setattr(threads, "SMALL_PARAMS", small_params)
    seen = counts_seen(monkeypatch)
    # tiny_bert weak (1M parameters), a linear probe of tiny_gpt2 strong (features extracted once).
    cfg = make_cfg(setting, "strong_model.linear_probe=true")
    run(cfg)
    assert seen == expected
    assert torch.get_num_threads() == 4


@pytest.mark.parametrize("value", ["0", "all", "1.5"])
def test_a_bad_threads_value_is_refused(make_cfg, value):
    with pytest.raises(ConfigError, match=rf"threads={value}: must be auto or an integer >= 1"):
        check_config(make_cfg(f"threads={value}"))


def test_idle_openmp_threads_sleep_unless_the_user_chose():
    env = {}
    threads.sleep_when_idle(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    threads.sleep_when_idle(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_setup_sets_the_wait_policy_before_torch_loads():
    """train.py runs config.setup() at import, before anything imports torch (whose OpenMP reads
    the variable once, when it loads)."""
    code = (
        "import os, sys; from w2s_lightning import config; config.setup(); "
        "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["PASSIVE", "False"]
