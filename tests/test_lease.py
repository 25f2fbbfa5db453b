"""The run lease and its fence, on the local disk and on a real S3 server (moto, on loopback):
exactly one driver owns a run at a time, epochs only grow, and a writer that lost the run cannot
commit. Races are forced, not hoped for: every contender reads the lease before any writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from aloe_ray import storage
from aloe_ray.pipeline.lease import Fenced, LeaseError, RunBusy, RunLease
from aloe_ray.pipeline.run_output import RunOutput
from aloe_ray.storage import PreconditionFailed
from test_run_safety import _scripted_results

LEASE = "jobs/generate_trees/lease.json"


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/runs"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _rewrite(out: RunOutput, **fields) -> None:
    """Change the lease file behind the holder's back (what another driver's write does)."""
    held = {**json.loads(out.read_text(LEASE)), **fields}
    out.write_json(LEASE, held)


def test_write_if_is_a_compare_and_swap(root):
    uri = storage.join(root, "cas.json")
    first = storage.write_if(uri, b"1", version=None)
    with pytest.raises(PreconditionFailed):
        storage.write_if(uri, b"again", version=None)  # exists: create-only fails
    second = storage.write_if(uri, b"2", version=first)
    with pytest.raises(PreconditionFailed):
        storage.write_if(uri, b"3", version=first)  # stale version
    assert storage.read_versioned(uri) == (b"2", second)
    assert storage.read_versioned(storage.join(root, "none.json")) is None


def test_one_owner_epochs_grow_and_release_keeps_the_epoch(root):
    out = RunOutput(root, "r")
    with RunLease(out, LEASE, ttl_s=30, log=lambda _: None) as first:
        assert first.epoch == 1 and first.taken_over is None
        with pytest.raises(RunBusy, match="is being written by another driver"):
            RunLease(out, LEASE, ttl_s=30).acquire()
    held = json.loads(out.read_text(LEASE))
    assert held["released"] and held["epoch"] == 1
    second = RunLease(out, LEASE, ttl_s=30)
    assert second.acquire() is None and second.epoch == 2  # a released run is free; the epoch goes on


def test_a_dead_driver_is_taken_over_at_the_next_epoch(root):
    out = RunOutput(root, "r")
    RunLease(out, LEASE, ttl_s=30).acquire()
    _rewrite(out, pid=_dead_pid())  # this host, its process gone: taken over at once
    taker = RunLease(out, LEASE, ttl_s=30)
    assert taker.acquire()["epoch"] == 1 and taker.epoch == 2
    _rewrite(out, host="elsewhere", renewed_at=time.time() - 100)  # another host, silent for 100 s
    assert RunLease(out, LEASE, ttl_s=30).acquire()["epoch"] == 2
    _rewrite(out, host="elsewhere", renewed_at=time.time())  # another host, renewed just now
    with pytest.raises(RunBusy):
        RunLease(out, LEASE, ttl_s=30).acquire()


@pytest.mark.parametrize("state", ["free", "dead"])
def test_drivers_released_at_the_same_instant_get_one_owner(root, monkeypatch, state):
    out = RunOutput(root, "r")
    if state == "dead":
        RunLease(out, LEASE, ttl_s=30).acquire()
        _rewrite(out, pid=_dead_pid())
    contenders = 4
    barrier = threading.Barrier(contenders)
    real_read = storage.read_versioned

    def read_then_wait(uri, s3=None):  # every contender has read the lease before any writes it
        got = real_read(uri, s3)
        if uri.endswith(LEASE):
            barrier.wait(timeout=30)
        return got

    monkeypatch.setattr(storage, "read_versioned", read_then_wait)
    results: list = [None] * contenders

    def contend(i: int) -> None:
        lease = RunLease(out, LEASE, ttl_s=30)
        try:
            lease.acquire()
            results[i] = lease
        except RunBusy as exc:
            results[i] = exc

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    monkeypatch.setattr(storage, "read_versioned", real_read)
    owners = [r for r in results if isinstance(r, RunLease)]
    assert len(owners) == 1, results
    assert all("at the same moment" in str(r) for r in results if isinstance(r, RunBusy))
    assert json.loads(out.read_text(LEASE))["owner"] == owners[0].owner


def test_a_taken_over_driver_loses_the_lease_and_its_writers_are_fenced(root):
    out = RunOutput(root, "r")
    old = RunLease(out, LEASE, ttl_s=30, log=lambda _: None)
    lost = []
    old.on_lost = lambda: lost.append(True)
    old.acquire()
    fence = old.fence()
    fence.check()  # still the owner
    results = _scripted_results(2)
    out.commit(results[:1], fence)

    _rewrite(out, pid=_dead_pid())  # old looks dead: a new driver takes over
    new = RunLease(out, LEASE, ttl_s=30)
    new.acquire()
    with pytest.raises(Fenced, match="epoch 1 no longer owns the run"):
        out.commit(results[1:], fence)  # the old epoch's late commit is refused
    trees = storage.list_files(out.table("trees"), ".parquet")
    assert len(trees) == 1  # only the part committed while it owned the run
    old.renew()  # its renewal finds the lease changed: lost, never written back
    assert old.lost and lost == [True]
    assert json.loads(out.read_text(LEASE))["owner"] == new.owner
    with pytest.raises(RunBusy, match="lost the run's lease"):
        old.check()
    new.fence().check()
    out.commit(results[1:], new.fence())
    assert len(storage.list_files(out.table("trees"), ".parquet")) == 2


def test_an_unreadable_lease_is_an_error_not_a_free_lease(root):
    out = RunOutput(root, "r")
    out.write_text(LEASE, "{not json")
    with pytest.raises(LeaseError, match="is not a lease"):
        RunLease(out, LEASE, ttl_s=30).acquire()
    lease = RunLease(out, LEASE, ttl_s=30)
    out.write_text(LEASE, "")
    with pytest.raises(LeaseError):
        lease.acquire()


def test_a_fence_on_an_unreadable_lease_refuses(tmp_path):
    out = RunOutput(str(tmp_path), "r")
    lease = RunLease(out, LEASE, ttl_s=30)
    lease.acquire()
    out.write_text(LEASE, "garbage")
    with pytest.raises(Fenced, match="cannot read the run's lease"):
        lease.fence().check()


def test_failed_renewals_are_logged_counted_and_lose_the_lease_after_ttl(tmp_path, monkeypatch):
    out = RunOutput(str(tmp_path), "r")
    lines: list[str] = []
    gone = threading.Event()
    lease = RunLease(out, LEASE, ttl_s=0.6, log=lines.append, on_lost=gone.set)
    lease.acquire()

    def outage(*a, **kw):
        raise OSError("S3 unreachable")

    monkeypatch.setattr(storage, "write_if", outage)
    lease._thread = threading.Thread(target=lease._renew_loop, daemon=True)
    lease._thread.start()
    assert gone.wait(timeout=30), lines
    assert lease.lost and lease.renew_failures >= 2
    assert any("lease renewal failed" in line and "S3 unreachable" in line for line in lines)
    assert any("lost the run's lease: no renewal succeeded" in line for line in lines)
    lease.release()


def test_the_job_refuses_a_live_lease_and_an_unreadable_one(tmp_path):
    from conftest import REPO

    out = RunOutput(str(tmp_path), "r")
    out.write_json(LEASE, {"owner": "other", "epoch": 3, "host": socket.gethostname(), "pid": os.getpid(),
                           "started_at": time.time(), "renewed_at": time.time(), "released": False, "ray": None})

    def job():
        return subprocess.run([sys.executable, str(REPO / "jobs" / "generate_trees.py"), f"--output={tmp_path}",
                               "--run_id=r"], cwd=REPO, capture_output=True, text=True, timeout=120)

    busy = job()
    assert busy.returncode == 2 and "is being written by another driver" in busy.stderr, busy.stderr[-2000:]
    out.write_text(LEASE, "{broken")
    broken = job()
    assert broken.returncode == 2 and "is not a lease" in broken.stderr, broken.stderr[-2000:]
