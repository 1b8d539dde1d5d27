"""The stage cache on its own: keys, atomic completion, and the list/prune command."""

from __future__ import annotations

import json
import os
import time

import pytest

from w2s_lightning.cache import StageCache, main, stage_key


def test_key_depends_on_content_not_on_key_order():
    assert stage_key("weak", {"a": 1, "b": {"c": 2}}) == stage_key("weak", {"b": {"c": 2}, "a": 1})
    assert stage_key("weak", {"a": 1}) != stage_key("weak", {"a": 2})
    assert stage_key("weak", {"a": 1}) != stage_key("ceiling", {"a": 1})


def test_a_failed_stage_leaves_nothing_that_reads_as_finished(tmp_path):
    cache = StageCache(tmp_path)

    def crash(workdir):
        (workdir / "half.parquet").write_text("partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.run("weak", "k1", crash)
    assert cache.lookup("weak", "k1") is None
    assert not list(tmp_path.glob("weak/.*.tmp-*"))

    calls = []

    def compute(workdir):
        calls.append(1)
        (workdir / "b.parquet").write_text("done")
        return {"test": {"acc": 0.5}}

    first = cache.run("weak", "k1", compute)
    second = cache.run("weak", "k1", compute)
    assert (first.cached, second.cached, len(calls)) == (False, True, 1)
    assert (second.path / "b.parquet").read_text() == "done"
    assert json.loads((second.path / "record.json").read_text())["test"] == {"acc": 0.5}


def test_disabled_or_forced_cache_recomputes(tmp_path):
    calls = []

    def compute(workdir):
        calls.append(1)
        return {}

    StageCache(tmp_path).run("weak", "k", compute)
    StageCache(tmp_path, force_retrain=True).run("weak", "k", compute)
    StageCache(tmp_path, enabled=False).run("weak", "k", compute)
    assert len(calls) == 3


def test_list_and_prune(tmp_path, capsys):
    cache = StageCache(tmp_path)
    for stage, key in (("weak", "old"), ("weak", "new"), ("student", "s")):
        cache.run(stage, key, lambda workdir: {"model": "tiny_bert"})
    old = tmp_path / "weak" / "old" / "record.json"
    record = json.loads(old.read_text())
    old.write_text(json.dumps({**record, "finished_at": time.time() - 40 * 86400}))
    (tmp_path / "weak" / ".killed.tmp-1-abc").mkdir()

    main(["list", str(tmp_path)])
    listing = capsys.readouterr().out
    assert "3 entries" in listing and "1 unfinished temporaries" in listing and "tiny_bert" in listing

    main(["prune", str(tmp_path), "--older-than-days", "30"])
    assert not (tmp_path / "weak" / "old").exists() and (tmp_path / "weak" / "new").exists()
    assert not (tmp_path / "weak" / ".killed.tmp-1-abc").exists()
    main(["prune", str(tmp_path), "--stage", "student", "--all"])
    assert not (tmp_path / "student" / "s").exists() and (tmp_path / "weak" / "new").exists()
    with pytest.raises(SystemExit):
        main(["prune", str(tmp_path)])
    assert os.listdir(tmp_path / "weak")
