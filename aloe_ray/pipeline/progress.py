"""Progress of a generation run: trees done/failed/in flight, tokens/s and ETA, printed as lines
(they show on the console and in `ray job logs`)."""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    def __init__(self, *, total: int, already_done: int, in_flight_cap: int, interval_s: float,
                 log: Callable[[str], None] = print) -> None:
        self.total, self.already_done, self.in_flight_cap = total, already_done, in_flight_cap
        self.interval_s, self.log = interval_s, log
        self.ok = self.failed = self.tokens = 0
        self.failures: list[tuple[str, str]] = []
        self.started = self._last = time.monotonic()

    def update(self, rows: list[dict]) -> None:
        for row in rows:
            if row["status"] == "ok":
                self.ok += 1
            else:
                self.failed += 1
                self.failures.append((row["tree_id"], row["failure_reason"] or ""))
            self.tokens += int(row["completion_tokens"] or 0)
        if time.monotonic() - self._last >= self.interval_s:
            self.report()

    @property
    def remaining(self) -> int:
        return self.total - self.already_done - self.ok - self.failed

    def report(self) -> None:
        self._last = time.monotonic()
        elapsed = max(self._last - self.started, 1e-9)
        finished = self.ok + self.failed
        rate = finished / elapsed
        eta = f"{self.remaining / rate:.0f}s" if rate > 0 else "?"
        self.log(
            f"[trees] done {self.already_done + self.ok}/{self.total} (this run {self.ok} ok, {self.failed} failed) "
            f"in flight {min(self.remaining, self.in_flight_cap)} | {self.tokens / elapsed:.1f} tok/s | "
            f"elapsed {elapsed:.0f}s | ETA {eta}"
        )
