"""The trainer presets' precision follows the hardware: bf16-mixed where bf16 runs natively,
32-true elsewhere; an explicit value wins; the resolved value, never a placeholder, reaches
Lightning, the stage keys and results.json; under bf16 the logits stay float32 and a diverged
stage still fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from w2s_lightning import experiment, precision, stages
from w2s_lightning.checks import check_config
from w2s_lightning.config import flat_config
from w2s_lightning.errors import ConfigError, TrainingDiverged
from w2s_lightning.models.classifier import Classifier
from w2s_lightning.pipeline import run

from .helpers import CONF_DIR, TINY

NATIVE = frozenset({"fpu", "avx512f", "avx512_bf16", "amx_bf16"})
PLAIN = frozenset({"fpu", "avx2", "avx512f", "avx512_bf16"})


@pytest.mark.parametrize(
    ("accelerator", "cpu_native", "cuda_native", "expected"),
    [
        ("cpu", True, None, "bf16-mixed"),
        ("cpu", False, None, "32-true"),
        ("cpu", False, True, "32-true"),  # a GPU in the machine does not make the CPU run faster
        ("gpu", False, True, "bf16-mixed"),
        ("cuda", True, False, "32-true"),  # pre-Ampere: bf16 would be emulated
        ("gpu", False, None, "bf16-mixed"),  # no device to ask here: the run resolves again where its GPU is
        ("auto", True, None, "bf16-mixed"),  # Lightning's auto picks the CPU when no CUDA device is visible
        ("auto", True, False, "32-true"),  # ... and the CUDA device when one is
        ("mps", True, None, "32-true"),
        ("GPU", False, True, "bf16-mixed"),
    ],
)
def test_choose(accelerator, cpu_native, cuda_native, expected):
    assert precision.choose(accelerator, cpu_native, cuda_native) == expected


@pytest.mark.parametrize(
    ("text", "native"),
    [
        ("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n", True),
        ("processor\t: 0\nflags\t\t: fpu avx2 amx_tile amx_bf16 amx_int8\n", True),
        ("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n", False),  # bf16 dot products alone: slower
        ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n", False),
        ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n", False),  # ARM bf16 is not in the list
    ],
)
def test_cpu_flags_from_cpuinfo(tmp_path, text, native):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    assert precision.cpu_bf16(precision.cpu_flags(path)) is native


def test_no_cpuinfo_means_float32(tmp_path):
    assert precision.cpu_flags(tmp_path / "absent") == frozenset()
    assert precision.choose("cpu", precision.cpu_bf16(frozenset()), None) == "32-true"


def composed(tmp_path: Path, *overrides: str):
    """The config as train.py receives it: interpolations unresolved."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path / "cache")
    return cfg


@pytest.mark.parametrize(("flags", "expected"), [(NATIVE, "bf16-mixed"), (PLAIN, "32-true")])
def test_presets_resolve_by_the_cpu_flags(tmp_path, monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda *a: flags)
    for preset in ("cpu", "ddp_cpu"):
        cfg = composed(tmp_path, f"trainer={preset}")
        assert "${w2s.precision:" in OmegaConf.to_yaml(cfg.trainer)  # still a placeholder after composing
        assert cfg.trainer.precision == expected
        assert flat_config(cfg)["trainer.precision"] == expected
        assert experiment.plain(cfg.trainer)["precision"] == expected


def test_an_explicit_precision_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda *a: NATIVE)
    assert composed(tmp_path, "trainer.precision=32-true").trainer.precision == "32-true"
    monkeypatch.setattr(precision, "cpu_flags", lambda *a: PLAIN)
    assert composed(tmp_path, "trainer.precision=bf16-mixed").trainer.precision == "bf16-mixed"


def test_a_literal_auto_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.precision=auto: .*fix: drop the trainer.precision override"):
        check_config(composed(tmp_path, "trainer.precision=auto"))


def keys_seen(monkeypatch) -> list[tuple[str, dict]]:
    """Every (stage, payload) hashed into a stage or features key during a run."""
    seen = []
    for module in (stages, experiment):
        real = module.stage_key

        def record(stage, payload, real=real):
            seen.append((stage, payload))
            return real(stage, payload)

        monkeypatch.setattr(module, "stage_key", record)
    return seen


def logits_seen(monkeypatch) -> list[tuple[bool, torch.dtype]]:
    """(autocast on, logits dtype) of every classifier forward."""
    seen, real = [], Classifier.forward

    def forward(self, *args, **kwargs):
        logits = real(self, *args, **kwargs)
        seen.append((torch.is_autocast_enabled("cpu"), logits.dtype))
        return logits

    monkeypatch.setattr(Classifier, "forward", forward)
    return seen


@pytest.mark.parametrize(("flags", "expected"), [(NATIVE, "bf16-mixed"), (PLAIN, "32-true")])
def test_a_run_keys_and_records_the_resolved_precision(tmp_path, monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda *a: flags)
    keys, logits = keys_seen(monkeypatch), logits_seen(monkeypatch)
    cfg = composed(tmp_path, "strong_model.linear_probe=true")  # the strong stages read cached features
    run(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["status"] == "done"
    assert results["config"]["trainer.precision"] == expected
    features = [p for stage, p in keys if stage == "features"]
    trained = [p for stage, p in keys if stage in ("weak", "ceiling", "student")]
    assert features and len(trained) == 3
    assert {p["trainer"]["precision"] for p in features} == {expected}
    assert {p["trainer"]["precision"] for p in trained} == {expected}
    assert "auto" not in json.dumps(keys, default=str) and "${" not in json.dumps(keys, default=str)
    # Autocast ran exactly when bf16 was chosen, and the logits left the head in float32 either way.
    assert {on for on, _ in logits} == {expected == "bf16-mixed"}
    assert {dtype for _, dtype in logits} == {torch.float32}


def test_a_diverged_stage_still_fails_under_bf16(tmp_path):
    cfg = composed(tmp_path, "trainer.precision=bf16-mixed", "strong_model.lr=1e6")
    with pytest.raises(TrainingDiverged, match=r"stage ceiling: the training loss of tiny_gpt2 is nan"):
        run(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["status"] == "failed" and results["config"]["trainer.precision"] == "bf16-mixed"
