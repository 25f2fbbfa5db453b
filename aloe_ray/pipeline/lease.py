"""One owner per run root, fenced: a lease file taken and renewed with conditional writes, and an
epoch (fencing token) that every commit checks.

The lease file (`jobs/generate_trees/lease.json` under the run root) holds the owner, its epoch,
host, pid, the Ray cluster and job its growers run in, and when it was last renewed. Every write
of it is conditional (`storage.write_if`: S3 `If-None-Match: *` to create, `If-Match: <ETag>` to
renew, take over or release; locally the same under a file lock), so of two drivers racing for a
run exactly one wins and the other is refused (`RunBusy`).

- A new owner always takes the next epoch; the file is kept on release (marked released), so
  epochs only grow.
- A lease is live while it is renewed within `ttl_s` and not released; a driver on this host
  whose process is gone is dead at once. Taking over from a dead driver bumps the epoch first:
  from then on its growers' commits are refused (`Fence.check`). The driver that took over then
  waits until the dead driver's growers are gone before it touches the run's files
  (`pipeline.generate`), so a grower caught between its check and its write cannot land a
  commit after the new owner's recovery either.
- A renewal that loses its condition means another driver took over: the lease is lost at once
  (`lost`, `on_lost`). A renewal that fails (an S3 outage) is logged and counted, and after
  `ttl_s` without a successful one the lease counts as lost as well (someone may have taken it).
- An unreadable lease file is an error (`LeaseError`), never a free lease.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from aloe_ray import storage
from aloe_ray.pipeline.run_root import RunRoot
from aloe_ray.storage import PreconditionFailed, S3Options

NO_FENCE_ENV = "ALOE_UNSAFE_NO_FENCE"
"""Set to 1 to switch the fence off (commits unchecked, no wait on a takeover): only for
benchmarks/chaos.py, to show what the fence prevents. Never set it on a real run."""


class RunBusy(RuntimeError):
    """Another live driver holds the run's lease, or took it over from this one."""


class LeaseError(RuntimeError):
    """The lease file exists but cannot be read as a lease."""


class Fenced(RuntimeError):
    """A commit refused: its writer's epoch is no longer the run's (another driver owns it)."""


def fence_disabled() -> bool:
    return os.environ.get(NO_FENCE_ENV) == "1"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse(uri: str, data: bytes) -> dict:
    try:
        held = json.loads(data)
        int(held["epoch"]), str(held["owner"]), float(held["renewed_at"])
    except (ValueError, KeyError, TypeError) as exc:
        raise LeaseError(f"{uri} is not a lease this version can read ({type(exc).__name__}: {exc}); if no driver "
                         "writes the run, delete it and rerun") from None
    return held


@dataclass(frozen=True)
class Fence:
    """What a writer carries to prove it still owns the run: checked before every commit."""

    root: str
    s3: S3Options | None
    name: str
    epoch: int
    owner: str

    def check(self) -> None:
        """Fenced unless the run's lease is still this owner's, at this epoch, and not released."""
        if fence_disabled():
            return
        uri = storage.join(self.root, self.name)
        try:
            got = storage.read_versioned(uri, self.s3)
            held = _parse(uri, got[0]) if got else None
        except Exception as exc:  # noqa: BLE001 - unreadable: not proven ours, so refused
            raise Fenced(f"cannot read the run's lease {uri} ({type(exc).__name__}: {exc}): commit refused") from None
        if held is None or held.get("released") or held["owner"] != self.owner or int(held["epoch"]) != self.epoch:
            now = "none" if held is None else f"epoch {held['epoch']}" + (" (released)" if held.get("released") else "")
            raise Fenced(f"{self.root}: this writer's epoch {self.epoch} no longer owns the run (lease: {now}): "
                         "commit refused")


@dataclass
class RunLease:
    out: RunRoot
    name: str
    """File of the lease under the run root, e.g. 'jobs/generate_trees/lease.json'."""
    ttl_s: float = 60.0
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    log: Callable[[str], None] = print
    on_lost: Callable[[], None] | None = None
    """Called once (from the renewal thread) when the lease is lost: the driver stops its work."""
    epoch: int = 0
    lost: bool = False
    lost_why: str = ""
    started_at: float = 0.0
    taken_over: dict | None = None
    """The dead holder's record this driver took the run from (None: the run was free)."""
    renew_failures: int = 0
    ray: dict | None = None
    """The Ray cluster and job this driver's growers run in, once it started them."""
    _version: str | None = None
    _renewed: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return self.out.file(self.name)

    def holder(self) -> dict | None:
        got = storage.read_versioned(self.uri, self.out.s3)
        return _parse(self.uri, got[0]) if got else None

    def live(self, held: dict) -> bool:
        if held.get("released"):
            return False
        if held.get("host") == socket.gethostname() and not _alive(int(held.get("pid", -1))):
            return False
        return time.time() - float(held.get("renewed_at", 0)) < self.ttl_s

    def acquire(self) -> dict | None:
        """Take the lease at the next epoch; returns the dead holder taken over (None: it was free
        or released). RunBusy if a live driver holds it or another driver won the race for it."""
        got = storage.read_versioned(self.uri, self.out.s3)
        held = _parse(self.uri, got[0]) if got else None
        if held and held["owner"] != self.owner and self.live(held):
            raise RunBusy(self._busy(held))
        self.epoch = int(held["epoch"]) + 1 if held else 1
        self.started_at = time.time()
        try:
            self._version = storage.write_if(self.uri, self._record(), self.out.s3, version=got[1] if got else None)
        except PreconditionFailed:
            raise RunBusy(f"{self.out.root}: another driver took this run's lease at the same moment; "
                          "it is running the run now") from None
        self._renewed = time.monotonic()
        self.taken_over = held if held and not held.get("released") else None
        return self.taken_over

    def fence(self) -> Fence:
        return Fence(self.out.root, self.out.s3, self.name, self.epoch, self.owner)

    def record_ray(self, gcs_address: str, job_id: str) -> None:
        """Say where this driver's growers run (a driver that takes over waits for them)."""
        self.ray = {"gcs_address": gcs_address, "job_id": job_id}
        self.renew()

    def renew(self) -> None:
        with self._lock:
            if self.lost:
                return
            try:
                self._version = storage.write_if(self.uri, self._record(), self.out.s3, version=self._version)
            except PreconditionFailed:
                try:
                    held = self.holder()
                    who = f"epoch {held['epoch']}, host {held.get('host')}, pid {held.get('pid')}" if held else "deleted"
                except Exception as exc:  # noqa: BLE001 - lost either way; say what can be said
                    who = f"unreadable: {exc}"
                self._lose(f"another driver took over this run's lease ({who})")
                return
            self._renewed = time.monotonic()

    def check(self) -> None:
        """RunBusy if the lease was lost, or is no longer this owner's at this epoch."""
        try:
            if not self.lost:
                self.fence().check()
                return
        except Fenced as exc:
            self._lose(str(exc))
        raise RunBusy(f"{self.out.root}: this driver lost the run's lease while it ran ({self.lost_why}); "
                      "stopping before compaction and the manifest")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            if self.lost or self._version is None:
                return
            try:
                storage.write_if(self.uri, self._record(released=True), self.out.s3, version=self._version)
            except PreconditionFailed:
                pass  # someone took it over meanwhile: theirs now
            except Exception as exc:  # noqa: BLE001 - the run is done; the lease expires after ttl_s
                self.log(f"[aloe-ray] WARNING: could not release the run's lease {self.uri} "
                         f"({type(exc).__name__}: {exc}); it expires {self.ttl_s:.0f}s after its last renewal")

    def __enter__(self) -> RunLease:
        self.acquire()
        self._thread = threading.Thread(target=self._renew_loop, name="aloe-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _lose(self, why: str) -> None:
        if self.lost:
            return
        self.lost, self.lost_why = True, why
        self._stop.set()
        self.log(f"[aloe-ray] WARNING: lost the run's lease: {why}; this driver stops writing")
        if self.on_lost is not None:
            self.on_lost()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - counted and logged; lost once it lasts ttl_s
                self.renew_failures += 1
                stale = time.monotonic() - self._renewed
                self.log(f"[aloe-ray] WARNING: lease renewal failed ({self.renew_failures} so far, last success "
                         f"{stale:.0f}s ago): {type(exc).__name__}: {str(exc)[:300]}")
                if stale >= self.ttl_s:
                    self._lose(f"no renewal succeeded for {stale:.0f}s (ttl {self.ttl_s:.0f}s): another driver "
                               "may have taken the run over")

    def _record(self, *, released: bool = False) -> bytes:
        return json.dumps({"owner": self.owner, "epoch": self.epoch, "host": socket.gethostname(),
                           "pid": os.getpid(), "started_at": self.started_at, "renewed_at": time.time(),
                           "released": released, "ray": self.ray}, indent=2).encode() + b"\n"

    def _busy(self, held: dict) -> str:
        age = time.time() - float(held.get("renewed_at", 0))
        return (f"{self.out.root} is being written by another driver (host {held.get('host')}, pid {held.get('pid')}, "
                f"epoch {held.get('epoch')}, renewed {age:.0f}s ago): wait for it to finish, stop it, or choose another "
                f"--run_id. A driver that died gives the run up at once on its own host, else after {self.ttl_s:.0f}s "
                "without renewal")
