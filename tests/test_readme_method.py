"""The README's "Write your own method" example works as printed: its module, its YAML, and the
label results.json gives it."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pandas as pd
import yaml

from w2s_lightning.pipeline import run

from .helpers import ROOT


def readme_block(language: str, first_line: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return next(b for b in blocks if b.startswith(first_line))


def test_the_readme_refinement_runs_and_names_itself(make_cfg, monkeypatch):
    module = types.ModuleType("w2s_lightning.methods.shrink")
    exec(readme_block("python", "# w2s_lightning/methods/shrink.py"), module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    option = yaml.safe_load(readme_block("yaml", "# conf/refine/shrink.yaml"))
    assert option == {"_target_": "w2s_lightning.methods.shrink.Shrink", "amount": 0.5}

    cfg = make_cfg(f"refine._target_={option['_target_']}", "+refine.amount=0.3")
    run(cfg)
    out = Path(cfg.paths.output_dir)
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "weak+shrink(amount=0.3)"
    labels = pd.read_parquet(out / "weak_labels.parquet")
    expected = 0.5 + 0.7 * (labels["weak_prob"] - 0.5)
    assert (labels["refined_prob"] - expected).abs().max() < 1e-9
