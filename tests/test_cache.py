"""The stage cache on its own: keys, atomic completion, and the list/prune command."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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


def test_list_marks_corrupt_entries_and_prune_removes_them(tmp_path, capsys):
    def compute(workdir):
        (workdir / "preds.parquet").write_text("p")
        return {"model": "tiny_bert"}

    for key in ("good", "garbled", "gutted"):
        StageCache(tmp_path).run("weak", key, compute)
    (tmp_path / "weak" / "garbled" / "record.json").write_text("{not json")
    (tmp_path / "weak" / "gutted" / "preds.parquet").unlink()
    (tmp_path / "weak" / ".corrupt-old-20240101-000000-abcdef").mkdir()

    main(["list", str(tmp_path)])
    listing = capsys.readouterr().out
    assert "garbled  CORRUPT: record.json is unreadable" in listing
    assert "gutted  CORRUPT: preds.parquet is missing" in listing
    assert "3 entries" in listing and "(2 corrupt, 1 set aside)" in listing

    main(["prune", str(tmp_path), "--older-than-days", "30"])
    assert sorted(os.listdir(tmp_path / "weak")) == ["good"]
    assert StageCache(tmp_path).lookup("weak", "good").cached


def test_the_cli_defaults_to_the_cache_under_w2s_root(tmp_path, monkeypatch, capsys):
    shared, elsewhere = tmp_path / "scratch", tmp_path / "elsewhere"
    StageCache(shared / ".cache" / "stages").run("weak", "k", lambda workdir: {"model": "tiny_bert"})
    (elsewhere / "stages").mkdir(parents=True)
    monkeypatch.setenv("W2S_ROOT", str(shared))
    monkeypatch.chdir(tmp_path)

    main(["list"])
    assert f"1 entries under {shared / '.cache' / 'stages'}" in capsys.readouterr().out
    main(["list", str(elsewhere / "stages")])  # an explicit ROOT wins
    assert f"0 entries under {elsewhere / 'stages'}" in capsys.readouterr().out


def test_a_missing_root_is_one_clear_line_and_a_failure(tmp_path, capsys):
    with pytest.raises(SystemExit) as failed:
        main(["list", str(tmp_path / "nowhere")])
    assert failed.value.code != 0
    assert capsys.readouterr().err == f"no stage cache at {tmp_path / 'nowhere'}: pass ROOT or set W2S_ROOT\n"


# Holds a lock from another process, as a running job does, until it is killed.
HOLD = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_prune_removes_stale_locks_and_temporaries_but_not_a_running_jobs(tmp_path, capsys):
    weak = tmp_path / "weak"
    StageCache(tmp_path).run("weak", "done", lambda workdir: {})  # leaves done.lock behind
    (weak / "orphan.lock").touch()
    (weak / ".dead.tmp-1-abc").mkdir()  # killed job, older name without a host
    (weak / ".gone.tmp-otherhost-1-abc").mkdir()
    (weak / "gone.lock").touch()
    (weak / ".busy.tmp-otherhost-1-abc").mkdir()  # running on another host: only its lock tells
    (weak / f".alive.tmp-{socket.gethostname()}-{os.getpid()}-abc").mkdir()  # a live pid of this host
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(weak / "busy.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        main(["list", str(tmp_path)])
        assert "4 unfinished temporaries (2 of running jobs)" in capsys.readouterr().out
        main(["prune", str(tmp_path), "--older-than-days", "30"])
        assert sorted(os.listdir(weak)) == sorted(
            ["done", ".busy.tmp-otherhost-1-abc", "busy.lock", f".alive.tmp-{socket.gethostname()}-{os.getpid()}-abc"]
        )
    finally:
        holder.kill()
        holder.wait()
    main(["prune", str(tmp_path), "--older-than-days", "30"])  # the job is gone: its temporary is stale now
    assert not (weak / ".busy.tmp-otherhost-1-abc").exists() and not (weak / "busy.lock").exists()
