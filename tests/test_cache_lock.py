"""The file lock (cache.lock=file) for caches shared across hosts without working POSIX locks."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest
from filelock import Timeout

from w2s_lightning.cache import StageCache, held, main
from w2s_lightning.locks import HOST, PIDNS

# One job: compute the stage through the file lock, slowly, logging each computation.
JOB = """
import sys, time
from w2s_lightning.cache import StageCache

root, log = sys.argv[1], sys.argv[2]

def compute(workdir):
    time.sleep(1)
    with open(log, "a") as f:
        f.write("computed\\n")
    (workdir / "preds.parquet").write_text("p")
    return {"model": "tiny_bert"}

print(StageCache(root, lock="file").run("weak", "k", compute).cached, flush=True)
"""


def lease(path, heartbeat, host=HOST, pid=None):
    """A lock file as another job would have left it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = {"host": host, "pidns": PIDNS, "pid": pid, "token": "other", "heartbeat": heartbeat}
    path.write_text(json.dumps(owner))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_two_processes_compute_a_stage_once_through_the_file_lock(tmp_path):
    log = tmp_path / "computed.log"
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", JOB, str(tmp_path / "cache"), str(log)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = sorted(job.communicate(timeout=60)[0].strip() for job in jobs)
    assert [job.returncode for job in jobs] == [0, 0]
    assert outs == ["False", "True"]  # one computed, the other read the finished entry
    assert log.read_text() == "computed\n"
    assert sorted(os.listdir(tmp_path / "cache" / "weak")) == ["k"]  # no lock file left behind


@pytest.mark.parametrize("owner", ["old heartbeat", "dead pid"])
def test_a_stale_lock_is_broken_with_a_warning(tmp_path, caplog, owner):
    if owner == "old heartbeat":
        lease(tmp_path / "weak" / "k.lease", time.time() - 1000, host="otherhost", pid=1)
    else:
        lease(tmp_path / "weak" / "k.lease", time.time(), pid=dead_pid())
    with caplog.at_level(logging.WARNING, logger="w2s_lightning.cache"):
        result = StageCache(tmp_path, lock="file", lock_timeout=5).run("weak", "k", lambda workdir: {})
    assert not result.cached and result.path.exists()
    assert (
        "broke the lock" in caplog.text and ("heartbeat is" if owner == "old heartbeat" else "is dead") in caplog.text
    )
    assert sorted(os.listdir(tmp_path / "weak")) == ["k"]


def test_a_live_lock_is_waited_for(tmp_path):
    path = tmp_path / "weak" / "k.lease"
    lease(path, time.time(), host="otherhost", pid=1)  # fresh heartbeat from another host
    with pytest.raises(Timeout):
        StageCache(tmp_path, lock="file", lock_timeout=0.5).run("weak", "k", lambda workdir: {})
    assert path.exists() and not (tmp_path / "weak" / "k").exists()

    lease(path, time.time(), pid=os.getpid())  # a live process of this host
    threading.Timer(0.5, path.unlink).start()  # ... which finishes
    started = time.monotonic()
    result = StageCache(tmp_path, lock="file", lock_timeout=10).run("weak", "k", lambda workdir: {})
    assert not result.cached and time.monotonic() - started >= 0.4


def test_the_heartbeat_is_refreshed_while_held(tmp_path):
    beats = []

    def compute(workdir):
        path = tmp_path / "weak" / "k.lease"
        for _ in range(3):
            beats.append(json.loads(path.read_text())["heartbeat"])
            assert held(path)
            time.sleep(0.3)
        return {}

    StageCache(tmp_path, lock="file", stale_after=0.4).run("weak", "k", compute)
    assert beats[0] < beats[-1] and not (tmp_path / "weak" / "k.lease").exists()


def test_prune_in_file_mode_spares_a_fresh_lock_and_breaks_a_stale_one(tmp_path, capsys):
    cache = StageCache(tmp_path, lock="file")
    for key in ("busy", "gone"):
        cache.run("weak", key, lambda workdir: {})
    weak = tmp_path / "weak"
    (weak / ".busy.tmp-otherhost-1-abc").mkdir()
    lease(weak / "busy.lease", time.time(), host="otherhost", pid=1)
    (weak / ".gone.tmp-otherhost-1-abc").mkdir()
    lease(weak / "gone.lease", time.time() - 1000, host="otherhost", pid=1)

    main(["list", str(tmp_path), "--lock", "file"])
    assert "2 unfinished temporaries (1 of running jobs)" in capsys.readouterr().out
    main(["prune", str(tmp_path), "--all", "--lock", "file"])
    assert sorted(os.listdir(weak)) == [".busy.tmp-otherhost-1-abc", "busy", "busy.lease"]


def test_an_unknown_lock_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"cache\.lock must be one of"):
        StageCache(tmp_path, lock="nfs")
