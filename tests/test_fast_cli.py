"""`train.py --help`, `--cfg job` and shell completion answer without importing torch, Lightning,
transformers or pandas: those take seconds, and none of them is needed to print a config."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from .helpers import ROOT

HEAVY = {"torch", "lightning", "pytorch_lightning", "transformers", "pandas"}

COMMANDS = {
    "help": (["--help"], {}),
    "cfg_job": (["--cfg", "job"], {}),
    # What bash's completion function runs when the user presses TAB after `python train.py loss=`.
    "completion": (["-sc", "query=bash"], {"COMP_LINE": "python train.py loss="}),
}


def run_train(args: list[str], env: dict[str, str]) -> tuple[str, set[str]]:
    """stdout of `python -X importtime train.py ARGS`, and the top-level packages it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "train.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    return proc.stdout, imported


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_answers_without_heavy_imports(command: str) -> None:
    args, env = COMMANDS[command]
    out, imported = run_train(args, env)
    assert "hydra" in imported  # the import log was read
    assert not imported & HEAVY, f"train.py {' '.join(args)} imported {sorted(imported & HEAVY)}"
    if command == "help":
        assert "strong_model: " in out and "loss: " in out
    elif command == "cfg_job":
        assert yaml.safe_load(out)["seed"] == 0
    else:
        assert "loss=xent" in out.split() and "loss=logconf" in out.split()
