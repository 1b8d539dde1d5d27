"""The stage cache checks what it reads: a damaged entry is reported, set aside and recomputed."""

from __future__ import annotations

import json
import logging
import os
import socket

import pytest

from w2s_lightning.cache import StageCache, check, stale_temporaries


def writer(calls: list, text: str = "weights"):
    def compute(workdir):
        calls.append(workdir.name)
        (workdir / "preds.parquet").write_text(text)
        (workdir / "ckpt").mkdir()
        (workdir / "ckpt" / "model.bin").write_bytes(bytes(range(64)))
        return {"model": "tiny_bert", "test": {"acc": 0.5}}

    return compute


def test_an_entry_records_its_files_and_an_intact_one_is_a_hit(tmp_path):
    cache, calls = StageCache(tmp_path), []
    first = cache.run("weak", "k", writer(calls))
    second = cache.run("weak", "k", writer(calls))
    assert (first.cached, second.cached, len(calls)) == (False, True, 1)
    files = json.loads((second.path / "record.json").read_text())["files"]
    assert sorted(files) == ["ckpt/model.bin", "preds.parquet"]
    assert files["ckpt/model.bin"]["bytes"] == 64 and len(files["ckpt/model.bin"]["sha256"]) == 64
    assert check(second.path) == (second.record, None)


def flip_a_byte(entry):
    data = bytearray((entry / "ckpt" / "model.bin").read_bytes())
    data[7] ^= 0xFF
    (entry / "ckpt" / "model.bin").write_bytes(data)


def strip_checksums(entry):  # an entry written before checksums were recorded
    record = json.loads((entry / "record.json").read_text())
    del record["files"]
    (entry / "record.json").write_text(json.dumps(record))


DAMAGE = {
    "edited_byte": (flip_a_byte, "ckpt/model.bin does not match its recorded sha256"),
    "truncated_file": (lambda e: (e / "preds.parquet").write_text("w"), "preds.parquet has 1 bytes, 7 were"),
    "deleted_file": (lambda e: (e / "ckpt" / "model.bin").unlink(), "ckpt/model.bin is missing"),
    "garbage_record": (lambda e: (e / "record.json").write_text("{not json"), "record.json is unreadable"),
    "no_checksums": (strip_checksums, "record.json has no file checksums"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_entry_is_reported_set_aside_and_recomputed(tmp_path, caplog, damage):
    cache, calls = StageCache(tmp_path), []
    entry = cache.run("weak", "k", writer(calls)).path
    harm, problem = DAMAGE[damage]
    harm(entry)

    with caplog.at_level(logging.WARNING, logger="w2s_lightning.cache"):
        again = cache.run("weak", "k", writer(calls))
    assert (again.cached, len(calls)) == (False, 2)
    assert "weak entry k is damaged" in caplog.text and problem in caplog.text
    [aside] = tmp_path.glob("weak/.corrupt-k-*")
    assert str(aside) in caplog.text
    assert (aside / "record.json").exists() and (aside / "preds.parquet").exists()  # nothing is lost
    assert check(again.path)[1] is None
    assert cache.run("weak", "k", writer(calls)).cached and len(calls) == 2


def test_lookup_alone_sets_a_damaged_entry_aside(tmp_path):
    cache = StageCache(tmp_path)
    entry = cache.run("weak", "k", writer([])).path
    (entry / "preds.parquet").unlink()
    assert cache.lookup("weak", "k") is None
    assert not entry.exists() and len(list(tmp_path.glob("weak/.corrupt-k-*"))) == 1


def test_force_retrain_replaces_an_intact_entry(tmp_path):
    calls = []
    StageCache(tmp_path).run("weak", "k", writer(calls, "old"))
    forced = StageCache(tmp_path, force_retrain=True).run("weak", "k", writer(calls, "new"))
    assert not forced.cached and (forced.path / "preds.parquet").read_text() == "new"
    hit = StageCache(tmp_path).run("weak", "k", writer(calls))
    assert hit.cached and len(calls) == 2 and not list(tmp_path.glob("weak/.corrupt-*"))


def test_a_running_jobs_temporary_names_its_host_and_pid_and_is_not_stale(tmp_path):
    seen = {}

    def compute(workdir):
        seen["name"], seen["stale"] = workdir.name, stale_temporaries(tmp_path)
        return {}

    StageCache(tmp_path).run("weak", "k", compute)
    assert seen["name"].startswith(f".k.tmp-{socket.gethostname()}-{os.getpid()}-")
    assert seen["stale"] == []
