"""A sweep's job folders are named by the job number, then every override that says what the job
computes (conf/hydra/default.yaml), as one safe folder name."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from w2s_lightning.config import dir_name

from .helpers import CONF_DIR, ROOT, TINY


def job_folder(num: int, *overrides: str) -> str:
    """`hydra.sweep.subdir` of job `num` with these overrides, as Hydra resolves it in the job."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.job.num = num
    return OmegaConf.select(cfg, "hydra.sweep.subdir")


def test_folder_names_every_override_but_where_output_goes() -> None:
    name = job_folder(
        3, "weak_model=tiny_bert", "strong_model=tiny_gpt2", "loss=logconf", "seed=1",
        "paths.root_dir=/scratch/me", "logger=none", "verbose=true",
    )  # fmt: skip
    assert name == "3_loss=logconf,seed=1,strong_model=tiny_gpt2,weak_model=tiny_bert"


def test_a_slash_in_a_value_makes_no_subfolder() -> None:
    name = job_folder(0, "dataset=local", "dataset.path=data/my file.jsonl")
    assert name == "0_dataset.path=data_my_file.jsonl,dataset=local"


def test_long_names_are_cut_and_stay_distinct() -> None:
    one, two = dir_name("a=" + "x" * 300 + "1"), dir_name("a=" + "x" * 300 + "2")
    assert len(one) == len(two) == 200 and one != two
    assert one.startswith("a=xxx")


@pytest.mark.slow
def test_real_sweep_folders(tmp_path) -> None:
    """A real two-job multirun. The pair is one the pipeline skips (strong not larger than weak):
    the folder is named before the job runs, so training would only cost time."""
    overrides = [o for o in TINY if not o.startswith(("weak_model=", "strong_model="))]
    subprocess.run(
        [sys.executable, "train.py", "-m", "weak_model=tiny_gpt2", "strong_model=tiny_bert",
         *overrides, "loss=xent,logconf", "seed=0", f"paths.root_dir={tmp_path}"],
        cwd=ROOT, env={**os.environ, "WANDB_MODE": "disabled"}, check=True, timeout=300,
        capture_output=True,
    )  # fmt: skip
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert [name.split("_")[0] for name in jobs] == ["0", "1"]
    for name, loss in zip(jobs, ["xent", "logconf"], strict=True):
        assert f"loss={loss}," in name and "seed=0" in name
        assert "strong_model=tiny_bert" in name and "weak_model=tiny_gpt2" in name
        assert "paths.root_dir" not in name and "logger" not in name
        assert json.loads((sweep / name / "results.json").read_text())["status"] == "skipped"
    assert (sweep / "report.md").is_file()
