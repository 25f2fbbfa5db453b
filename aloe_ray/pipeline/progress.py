"""Progress of a generation run: trees done/failed/in flight, turns, tokens/s and ETA, printed as
lines (they show on the console and in `ray job logs`).

Two sources feed it: committed parts (exact counts of finished trees, from the driver's stream of
part summaries) and a timer-driven heartbeat, so that a run whose trees all sit in one part is
not silent until it ends. The heartbeat reads a `ProgressBoard` (a tiny Ray actor) and the
engines' generated-token counters. Each grower counts its own trees in a `TreeTally` and sends
the board its totals at most once a second, so the board's load follows the number of growers,
not the number of trees or turns.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable


FAILURES_KEPT = 100
"""Failed trees (id, reason) the driver keeps for its log; every one is in the trees table."""


class TreeTally:
    """One grower's live counters: trees started and finished, completed turns of the trees still
    growing. A tree started again while it grows (a retried batch) is counted once. It holds only
    the trees in flight, so its size follows the grower's slots, not the run."""

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0
        self.live: dict[str, int] = {}  # deepest completed turn per growing tree

    def tree_started(self, tree_id: str) -> None:
        if tree_id not in self.live:
            self.started += 1
            self.live[tree_id] = 0

    def turn_done(self, tree_id: str, turn: int) -> None:
        if tree_id in self.live:
            self.live[tree_id] = max(self.live[tree_id], turn)

    def tree_finished(self, tree_id: str) -> None:
        if self.live.pop(tree_id, None) is not None:
            self.finished += 1

    def snapshot(self) -> dict:
        return {"started": self.started, "finished": self.finished, "turns": sum(self.live.values())}


class ProgressBoard:
    """The growers' latest tallies, summed; used as a Ray actor (`ray.remote(ProgressBoard)`)."""

    def __init__(self) -> None:
        self.tallies: dict[str, dict] = {}  # grower actor id -> its latest TreeTally snapshot
        self.growers: dict[str, str] = {}  # grower actor id -> the node it runs on

    def report(self, grower_id: str, tally: dict) -> None:
        self.tallies[grower_id] = tally

    def grower_started(self, actor_id: str, node_id: str) -> None:
        self.growers[actor_id] = node_id

    def placement(self) -> dict[str, int]:
        """Grower actors per node (a restarted actor counts again)."""
        return dict(Counter(self.growers.values()))

    def snapshot(self) -> dict:
        """Trees started, trees finished (grown, maybe not yet committed), and the completed
        turns of trees still growing, over every grower."""
        return {k: sum(t[k] for t in self.tallies.values()) for k in ("started", "finished", "turns")}


class Progress:
    def __init__(self, *, total: int, already_done: int, to_grow: int, max_turns: int, interval_s: float,
                 log: Callable[[str], None] = print) -> None:
        self.total, self.already_done, self.to_grow = total, already_done, to_grow
        self.max_turns, self.interval_s, self.log = max_turns, interval_s, log
        self.ok = self.failed = self.tokens = 0
        self.started_trees = self.finished_trees = self.turns = 0
        self.engine_tokens: int | None = None
        self.failures: list[tuple[str, str]] = []
        self.started = self._last = time.monotonic()
        self._lock = threading.Lock()

    def update(self, rows: list[dict]) -> None:
        """A part was committed: count its trees."""
        with self._lock:
            for row in rows:
                if row["status"] == "ok":
                    self.ok += 1
                else:
                    self.failed += 1
                    if len(self.failures) < FAILURES_KEPT:  # the driver's memory stays flat
                        self.failures.append((row["tree_id"], row["failure_reason"] or ""))
                self.tokens += int(row["completion_tokens"] or 0)
        if time.monotonic() - self._last >= self.interval_s:
            self.report()

    def observe(self, *, started: int, turns: int, engine_tokens: int | None, finished: int = 0) -> None:
        """Live counters from the heartbeat: trees started and finished, completed turns of the
        trees still growing, engine tokens."""
        with self._lock:
            self.started_trees = max(self.started_trees, started)
            self.finished_trees = max(self.finished_trees, finished)
            self.turns = turns
            if engine_tokens is not None:
                self.engine_tokens = max(engine_tokens, self.engine_tokens or 0)

    @property
    def remaining(self) -> int:
        return self.to_grow - self.ok - self.failed

    def line(self) -> str:
        with self._lock:
            now = time.monotonic()
            elapsed = max(now - self.started, 1e-9)
            finished = self.ok + self.failed
            grown = max(finished, self.finished_trees)
            in_flight = max(min(self.started_trees, self.to_grow) - grown, 0)
            # Work is measured in turns: a finished tree counts as all its turns (even one that
            # ended early), a growing tree as the turns it has completed.
            turns_total = self.to_grow * self.max_turns
            turns_done = min(grown * self.max_turns + self.turns, turns_total)
            rate = turns_done / elapsed
            eta = f"{(turns_total - turns_done) / rate:.0f}s" if rate > 0 else "?"
            tokens = self.engine_tokens if self.engine_tokens is not None else self.tokens
            return (
                f"[trees] done {self.already_done + finished}/{self.total} (this run {self.ok} ok, "
                f"{self.failed} failed) in flight {in_flight} | turns {turns_done}/{turns_total} | "
                f"{tokens / elapsed:.1f} tok/s | elapsed {elapsed:.0f}s | ETA {eta}"
            )

    def report(self) -> None:
        self._last = time.monotonic()
        self.log(self.line())


class Heartbeat:
    """Prints a progress line every `interval_s` from a background thread, whatever the parts do.

    `poll()` returns the live counters (`started`, `turns`, `engine_tokens`); a poll that fails
    (an engine replica restarting, say) skips that beat rather than stopping the run.
    """

    def __init__(self, progress: Progress, poll: Callable[[], dict]) -> None:
        self.progress, self.poll = progress, poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aloe-progress", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def beat(self) -> None:
        try:
            self.progress.observe(**self.poll())
        except Exception as exc:  # noqa: BLE001 - progress must never break the run
            self.progress.log(f"[trees] (progress poll failed: {type(exc).__name__}: {exc})")
            return
        self.progress.report()

    def _run(self) -> None:
        while not self._stop.wait(self.progress.interval_s):
            if time.monotonic() - self.progress._last >= self.progress.interval_s * 0.5:
                self.beat()
