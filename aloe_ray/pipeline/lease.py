"""One driver per run: a lease file under the run root that the writing driver renews.

A second driver on the same run root is refused while the lease is live, so it never deletes the
first one's in-flight parts as orphans or interleaves commits with it. A lease is dead when it
has not been renewed for `ttl_s` seconds (a driver on another host), or at once when its driver
ran on this host and its process is gone (a killed driver, rerun right away). Then the next
driver takes it over. On S3 the check-then-write has a short race window (no create-if-absent
in pyarrow's filesystems); the read-back after writing catches most losers.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from aloe_ray import storage
from aloe_ray.pipeline.run_root import RunRoot


class RunBusy(RuntimeError):
    """Another live driver holds the run's lease."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RunLease:
    out: RunRoot
    name: str
    """File of the lease under the run root, e.g. 'jobs/generate_trees/lease.json'."""
    ttl_s: float = 60.0
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    lost: bool = False
    """Another driver took the lease over (this one stalled past ttl_s): stop writing."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def holder(self) -> dict | None:
        text = self.out.read_text(self.name)
        try:
            return json.loads(text) if text else None
        except json.JSONDecodeError:
            return None

    def live(self, held: dict) -> bool:
        if held.get("host") == socket.gethostname() and not _alive(int(held.get("pid", -1))):
            return False
        return time.time() - float(held.get("renewed_at", 0)) < self.ttl_s

    def acquire(self) -> dict | None:
        """Take the lease; returns the dead holder taken over (None: it was free). RunBusy if a
        live driver holds it."""
        held = self.holder()
        if held and held.get("owner") != self.owner and self.live(held):
            raise RunBusy(self._busy(held))
        self._write(started_at=time.time())
        again = self.holder()
        if not again or again.get("owner") != self.owner:
            raise RunBusy(self._busy(again or {}))
        return held

    def renew(self) -> None:
        held = self.holder()
        if held and held.get("owner") != self.owner:
            self.lost = True
            self._stop.set()
            return
        self._write(started_at=(held or {}).get("started_at", time.time()))

    def check(self) -> None:
        """RunBusy if the lease was taken over while this driver ran."""
        if self.lost or (self.holder() or {}).get("owner") != self.owner:
            self.lost = True
            raise RunBusy(f"{self.out.root}: another driver took over this run's lease while this one ran "
                          f"(it stalled past {self.ttl_s:.0f}s); stopping before compaction and the manifest")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        held = self.holder()
        if held and held.get("owner") == self.owner:
            storage.delete_file(self.out.file(self.name), self.out.s3)

    def __enter__(self) -> RunLease:
        self.acquire()
        self._thread = threading.Thread(target=self._renew_loop, name="aloe-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except Exception:  # noqa: BLE001 - a missed renewal is retried; the run goes on
                pass

    def _write(self, *, started_at: float) -> None:
        self.out.write_json(self.name, {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                                        "started_at": started_at, "renewed_at": time.time()})

    def _busy(self, held: dict) -> str:
        age = time.time() - float(held.get("renewed_at", 0))
        return (f"{self.out.root} is being written by another driver (host {held.get('host')}, pid {held.get('pid')}, "
                f"renewed {age:.0f}s ago): wait for it to finish, stop it, or choose another --run_id. A driver "
                f"that died gives the run up at once on its own host, else after {self.ttl_s:.0f}s without renewal")
