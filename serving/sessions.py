"""The bounded store of live sessions in one replica. Pure asyncio.

Bounds: at most `max_sessions` sessions. Adding one to a full store first drops an ended session
(already written), else ends the least recently used idle one ('evicted', written by `on_end`);
when every session is busy (a turn in flight) the store refuses with `StoreFull`. A session idle
for `idle_timeout_s` is ended as 'abandoned' by `sweep` (run periodically by `run_sweeper`).
No lock is held across generation: each session has its own lock; the store's own state changes
only between awaits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from serving.live_session import Session


class StoreFull(RuntimeError):
    """Every live session is busy; no room for another."""


class SessionStore:
    def __init__(self, max_sessions: int, idle_timeout_s: float,
                 on_end: Callable[[Session], Awaitable[None]]) -> None:
        self.max_sessions, self.idle_timeout_s, self.on_end = max_sessions, idle_timeout_s, on_end
        self.sessions: dict[str, Session] = {}
        self._sweeper: asyncio.Task | None = None

    def get(self, session_id: str) -> Session:
        try:
            return self.sessions[session_id]
        except KeyError:
            raise KeyError(f"no session '{session_id}' (ended and dropped, never created, or held by "
                           f"another replica)") from None

    async def add(self, session: Session) -> None:
        while len(self.sessions) >= self.max_sessions:
            ended = [s for s in self.sessions.values() if s.ended]
            if ended:
                del self.sessions[min(ended, key=lambda s: s.last_active).session_id]
                continue
            idle = [s for s in self.sessions.values() if not s.lock.locked()]
            if not idle:
                raise StoreFull(f"all {self.max_sessions} live sessions are busy; try again shortly")
            await self.end(min(idle, key=lambda s: s.last_active), "evicted")
        self.sessions[session.session_id] = session

    async def end(self, session: Session, reason: str) -> None:
        """End a session (after any turn in flight) and write it; ending twice does nothing."""
        async with session.lock:
            if session.ended:
                return
            session.ended = reason
            await self.on_end(session)

    async def sweep(self) -> list[str]:
        """End the sessions idle longer than the timeout; returns their ids."""
        now = time.monotonic()
        stale = [s for s in self.sessions.values()
                 if not s.ended and not s.lock.locked() and now - s.last_active > self.idle_timeout_s]
        for s in stale:
            await self.end(s, "abandoned")
        return [s.session_id for s in stale]

    def start_sweeper(self, every_s: float) -> None:
        """Run `sweep` every `every_s` seconds on the running loop (once per store)."""
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(every_s))

    async def _sweep_forever(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.sweep()
            except Exception:  # a failed write must not stop the sweeper
                logging.getLogger("ray.serve").exception("interactive: ending idle sessions failed")
