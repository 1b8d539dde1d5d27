"""Sweeps through the Ray and submitit launchers (conf/hydra/launcher/, docs/scale_out.md). One grid of
2 weak × 2 strong tiny models, its jobs in separate processes sharing one stage cache, must train each
weak model and each ceiling once, finish every job and write the sweep report once. The cluster
presets are checked against what they talk to: a Ray head started by `ray start`, and the batch
script SLURM would be given."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from bench.launchers import run_in_session, stop
from bench.sweep import STAGES

from .helpers import ROOT, TINY


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


needs_ray = pytest.mark.skipif(
    not (installed("ray") and installed("hydra_plugins.hydra_ray_launcher")),
    reason="hydra-ray-launcher is not installed (pip install -e '.[ray]')",
)
needs_submitit = pytest.mark.skipif(
    not (installed("submitit") and installed("hydra_plugins.hydra_submitit_launcher")),
    reason="hydra-submitit-launcher is not installed (pip install -e '.[slurm]')",
)

WEAK, STRONG = ("tiny_bert", "tiny_gpt2"), ("tiny_gpt2", "tiny_pythia")
GRID = [
    f"weak_model={','.join(WEAK)}",
    f"strong_model={','.join(STRONG)}",
    # Keeps the self-pair tiny_gpt2 -> tiny_gpt2, so each weak model and each ceiling serves two jobs.
    "pairs.require_larger_strong=false",
    "seed=0",
    "loss=xent",
]
SWEEP_TIMEOUT = 400  # seconds; a sweep takes one to two minutes on 2 busy cores


def sweep_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # One torch thread per job: the jobs share the machine's cores.
    env.update(WANDB_MODE="disabled", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return env


def run_sweep(tmp_path: Path, *overrides: str, env: dict | None = None) -> tuple[Path, str, int]:
    """`train.py -m` on tiny data with these overrides; the sweep folder, the driver's log and pid."""
    tiny = [o for o in TINY if not o.startswith(("weak_model=", "strong_model="))]
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *overrides, *tiny,
           f"paths.root_dir={tmp_path}", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    log_file = tmp_path / "sweep.log"
    rc, pid = run_in_session(cmd, tmp_path, env or sweep_env(), log_file, SWEEP_TIMEOUT)
    text = log_file.read_text()
    assert rc == 0, f"the sweep {'timed out' if rc is None else f'exited {rc}'}:\n{text[-4000:]}"
    return sweep, text, pid


def check_grid(sweep: Path, cache: Path, log: str) -> list[Path]:
    """Every job done, every stage computed once, one report; the job folders."""
    jobs = sorted(p.parent for p in sweep.glob("*/results.json"))
    results = [json.loads((job / "results.json").read_text()) for job in jobs]
    assert sorted((r["weak_model"], r["strong_model"]) for r in results) == [(w, s) for w in WEAK for s in STRONG]
    assert [r["status"] for r in results] == ["done"] * 4

    # One entry per weak model, per ceiling and per pair's student, and exactly one job that says it
    # trained each: two jobs training the same stage would both say so.
    entries = {stage: len(list((cache / stage).glob("*/record.json"))) for stage in STAGES}
    trained = {stage: sum(not r[stage]["cached"] for r in results) for stage in STAGES}
    assert entries == {"weak": 2, "ceiling": 2, "student": 4}
    assert trained == entries

    summary = pd.read_csv(sweep / "summary.csv")
    assert sorted(summary["status"]) == ["done"] * 4
    assert [p.relative_to(sweep) for p in sweep.rglob("report.md")] == [Path("report.md")]
    assert log.count("sweep report written to") == 1, "the report was written by more than the driver"
    return jobs


def launcher_target(sweep: Path) -> str:
    return OmegaConf.load(sweep / "multirun.yaml").hydra.launcher._target_


def ray_workers(log: str) -> set[int]:
    """The pids of the processes that ran jobs: Ray prefixes what its workers print with them."""
    return {int(pid) for pid in re.findall(r"\(_run_job pid=(\d+)\)", log)}


@pytest.mark.slow
@needs_ray
def test_ray_sweep_on_a_local_instance_trains_each_stage_once(tmp_path):
    # Ray authenticates even a private instance, and would write a new token to ~/.ray without one.
    env = sweep_env(RAY_AUTH_TOKEN=secrets.token_hex(32))
    sweep, log, driver = run_sweep(
        tmp_path, "hydra/launcher=ray_local", "hydra.launcher.ray.init.num_cpus=2", *GRID, env=env
    )
    assert launcher_target(sweep).endswith("RayLauncher")
    assert "Started a local Ray instance" in log
    workers = ray_workers(log)
    assert workers and driver not in workers, "the jobs did not run in Ray's workers"
    check_grid(sweep, tmp_path / ".cache" / "stages", log)


@pytest.mark.slow
@needs_submitit
def test_submitit_local_sweep_trains_each_stage_once(tmp_path):
    sweep, log, _ = run_sweep(tmp_path, "hydra/launcher=submitit_local", *GRID)
    assert launcher_target(sweep).endswith("LocalLauncher")
    jobs = check_grid(sweep, tmp_path / ".cache" / "stages", log)
    # Each job ran as its own submitit job and handed its result back through its folder.
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == len(jobs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@needs_ray
def test_ray_cluster_preset_joins_a_running_cluster(tmp_path):
    """`ray start --head` as on a cluster's head node, then a one-job sweep with the ray_cluster preset
    given the head's address: the launcher must join that cluster (ray.init refuses resources or an
    object store size when joining) and run the job there. The job is a pair the pipeline skips, so
    nothing trains."""
    port = free_port()
    # The head requires a token (Ray's default), and a client given an explicit address sends one only
    # in token mode. A token of the test's own leaves ~/.ray/auth_token alone.
    env = sweep_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    head_log = tmp_path / "head.log"
    with head_log.open("w") as out:
        head = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
             "--num-cpus=2", "--include-dashboard=false", "--object-store-memory=100000000", "--disable-usage-stats"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while "Ray runtime started" not in head_log.read_text():
                assert head.poll() is None and time.monotonic() < deadline, head_log.read_text()[-3000:]
                time.sleep(0.5)
            sweep, log, driver = run_sweep(
                tmp_path, "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address=127.0.0.1:{port}",
                "hydra.launcher.ray.remote.num_gpus=0", "hydra.launcher.ray.remote.num_cpus=1",
                "weak_model=tiny_gpt2", "strong_model=tiny_bert", env=env,
            )  # fmt: skip
        finally:
            stop(head)
    assert re.search(rf"Connecting to existing Ray cluster at address: \S+:{port}", log), log[-3000:]
    assert "Started a local Ray instance" not in log
    workers = ray_workers(log)
    assert workers and driver not in workers, "the job did not run in the cluster's workers"
    [results] = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert results["status"] == "skipped"


@pytest.mark.slow  # the driver imports Lightning for the sweep report: seconds
@needs_submitit
def test_slurm_preset_submits_one_array_with_one_gpu_per_job(tmp_path):
    """The documented SLURM command up to sbatch, which here records the batch script and refuses
    it: one array of the 4 jobs, one node, one task and one GPU each, the requeue signal before
    the time limit."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that it exists
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/batch.sh\necho "no cluster here" >&2\nexit 1\n')
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    env = sweep_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu",
           "trainer=gpu", *GRID, f"paths.root_dir={tmp_path}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "no cluster here" in proc.stderr + proc.stdout
    options = re.findall(r"^#SBATCH (--\S+)$", (tmp_path / "batch.sh").read_text(), flags=re.M)
    for option in ("--array=0-3%4", "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=1", "--cpus-per-task=8",
                   "--partition=gpu", "--time=720", "--signal=USR2@120"):  # fmt: skip
        assert option in options, f"{option} not in {options}"
    assert not (tmp_path / ".cache").exists(), "a job ran on the submitting machine"
