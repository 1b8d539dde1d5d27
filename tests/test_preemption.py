"""A job stopped by SIGTERM (SLURM preemption, a time limit, `scancel`) exits 143 and says how to go
on, instead of Lightning's status 0; its finished stages stay cached."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from .helpers import ROOT, TINY

pytestmark = pytest.mark.slow


def test_sigterm_during_a_stage_exits_143_and_keeps_finished_work(tmp_path):
    env = {**os.environ, "W2S_ROOT": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    # Enough examples that the weak model's second epoch lasts a while after the first is reported.
    cmd = [sys.executable, "train.py", *TINY, "dataset.n_weak=1500", "train.epochs=3"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("weak     epoch 1/3"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM" in err and "run the same command again" in err
    [results] = (tmp_path / "outputs").rglob("results.json")
    assert json.loads(results.read_text())["status"] == "running"  # the sweep report lists it as unfinished
