"""The Ray Data stage that grows trees: an async callable class; a batch is a list of tree
positions in the run's `TreePlan`.

Each actor holds engine clients (clients of the shared engine deployments: no weights here) and grows
trees as asyncio tasks, at most `trees_in_flight` at once over all the batches it holds (Ray
Data hands it several): a slot freed by a finished tree goes to the next waiting tree at once,
so no batch's slowest tree idles the others' concurrency. A batch's trees are committed in
parts of `trees_per_part` consecutive trees, each as soon as its trees are grown; the parts of
a batch are the same on every try (a retried batch rewrites the same files).

A part whose commit keeps failing (an S3 outage, a throttling burst) is not thrown away: its
grown trees stay in the grower (spilled) and their commit is tried again later, at once when
another part of this grower commits (the store answers again), else with a growing backoff, while
the grower goes on growing; only when the last try fails do the part's trees fail, with the reason
(a rerun grows them again). A fenced commit is never tried again.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pyarrow as pa

from aloe_ray.config.generate import RolesConfig
from aloe_ray.engines.base import ChatEngine, Sampling
from aloe_ray.pipeline.lease import Fence, Fenced
from aloe_ray.pipeline.progress import TreeTally
from aloe_ray.pipeline.run_output import RunOutput
from aloe_ray.trees import RoleBinding, TreePlan, TreeRoles, TreeShape, TreeSpec, grow_tree

REPORT_INTERVAL_S = 1.0
"""Most one progress message per grower per this many seconds."""

COMMIT_ATTEMPTS = 6
COMMIT_BACKOFF_S = 1.0
"""Tries of a part's commit at once (backoff 1, 2, 4, 8, 16 s) before it is spilled."""

SPILL_ATTEMPTS = 4
SPILL_BACKOFF_S = 30.0
"""Later tries of a spilled part: as soon as another part of the grower commits, at most after
30, 60, 120, 240 s (about 7.5 min in all); after the last one its trees fail."""

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("tree_id", "status", "failure_reason", "num_nodes", "num_pairs",
                   "prompt_tokens", "completion_tokens", "llm_calls", "part")


def bind_roles(roles: RolesConfig, engines: dict[str, ChatEngine]) -> TreeRoles:
    def bind(name: str) -> RoleBinding:
        cfg = getattr(roles, name)
        s = cfg.sampling
        return RoleBinding(engines[cfg.engine], Sampling(s.temperature, s.top_p, s.max_tokens), cfg.max_attempts)

    return TreeRoles(*(bind(r) for r in ("simulator", "inducer", "responder", "judge")))


class TreeGrower:
    def __init__(self, plan: TreePlan, roles: RolesConfig, engines: dict[str, ChatEngine], shape: TreeShape,
                 output: RunOutput, board=None, *, trees_in_flight: int = 16, trees_per_part: int = 4,
                 fence: Fence | None = None):
        self.plan = plan
        self.roles = bind_roles(roles, engines)
        self.shape = shape
        self.output = output
        self.fence = fence
        """The driver's epoch: every commit checks it (a grower of a driver that lost the run commits nothing)."""
        self.trees_in_flight = trees_in_flight
        self.trees_per_part = trees_per_part
        self._slots: asyncio.Semaphore | None = None  # made in the event loop that runs the batches
        self._committed: asyncio.Event | None = None
        """Set (and replaced) whenever a part commits: wakes the spilled parts to try again."""
        self.spilled = 0
        """Parts whose commit failed its first tries and was kept for later."""
        self.board = board
        """Handle of the run's ProgressBoard actor (or None): told where this grower runs, of tree
        starts and of finished turns, fire and forget."""
        self.tally = TreeTally()
        self._reported = 0.0
        self.grower_id = "local"
        if board is not None:
            import ray

            ctx = ray.get_runtime_context()
            self.grower_id = ctx.get_actor_id() or f"driver-{id(self)}"
            board.grower_started.remote(self.grower_id, ctx.get_node_id())

    async def __call__(self, batch: pa.Table) -> dict:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.trees_in_flight)
            self._committed = asyncio.Event()
        positions = batch.column("spec_index").to_pylist()
        specs = [self.plan.spec(i) for i in positions]
        k = self.trees_per_part
        parts = await asyncio.gather(*(self._grow_part(specs[i:i + k]) for i in range(0, len(specs), k)))
        self._report(force=True)
        # The positions come back too: the driver tells from them which batches never returned.
        return {"spec_index": positions, **{c: [v for part in parts for v in part[c]] for c in SUMMARY_COLUMNS}}

    async def _grow_part(self, specs: list[TreeSpec]) -> dict:
        results = await asyncio.gather(*(self._grow(s) for s in specs))
        summary = {c: [r.tree.get(c) for r in results] for c in SUMMARY_COLUMNS if c != "part"}
        try:
            part = await self._commit(results)
        except Fenced as exc:
            part = None
            summary["status"] = ["failed"] * len(results)
            summary["failure_reason"] = [f"fenced (not written): {exc}"] * len(results)
        except Exception as exc:  # noqa: BLE001 - the trees stay unwritten: a rerun grows them again
            part = None
            reason = f"commit failed after {COMMIT_ATTEMPTS + SPILL_ATTEMPTS} attempts (not written; a rerun " \
                     f"grows it): {type(exc).__name__}: {str(exc)[:500]}"
            summary["status"] = ["failed"] * len(results)
            summary["failure_reason"] = [reason] * len(results)
        summary["part"] = [part] * len(results)
        return summary

    async def _commit(self, results) -> str:
        """Commit the part, retrying a failed write (a transient S3 error): the part's file names
        derive from its tree ids, so a retry rewrites the same files. After COMMIT_ATTEMPTS the
        part is spilled: kept, and tried again when another part commits or its backoff ends."""
        last = COMMIT_ATTEMPTS + SPILL_ATTEMPTS - 1
        for attempt in range(last + 1):
            if attempt >= COMMIT_ATTEMPTS:
                await self._another_commit(SPILL_BACKOFF_S * 2.0 ** (attempt - COMMIT_ATTEMPTS))
            elif attempt:
                await asyncio.sleep(min(COMMIT_BACKOFF_S * 2.0 ** (attempt - 1), 30.0))
            try:
                part = await asyncio.to_thread(self.output.commit, results, self.fence)
            except Fenced:
                raise  # not ours to write any more: never retried
            except Exception as exc:  # noqa: BLE001 - retried; the last failure is the caller's
                if attempt == last:
                    raise
                if attempt == COMMIT_ATTEMPTS - 1:
                    self.spilled += 1
                    log.warning("commit of %d tree(s) failed %d times (%s: %s); kept in the grower and tried "
                                "again when another part commits, or after %.0fs", len(results), attempt + 1,
                                type(exc).__name__, str(exc)[:300], SPILL_BACKOFF_S)
                continue
            self._committed.set()  # wake the spilled parts: the store answers again
            self._committed = asyncio.Event()
            return part
        raise AssertionError("unreachable")

    async def _another_commit(self, timeout_s: float) -> None:
        """Until another part of this grower commits, or `timeout_s` passes."""
        try:
            await asyncio.wait_for(self._committed.wait(), timeout_s)
        except TimeoutError:
            pass

    async def _grow(self, spec: TreeSpec):
        async with self._slots:
            self.tally.tree_started(spec.tree_id)
            self._report()

            def on_turn(turn: int) -> None:
                self.tally.turn_done(spec.tree_id, turn)
                self._report()

            result = await grow_tree(spec, self.roles, self.shape, on_turn=on_turn)
            self.tally.tree_finished(spec.tree_id)
            self._report()
            return result

    def _report(self, force: bool = False) -> None:
        """Send the board this grower's tally, at most once per REPORT_INTERVAL_S (fire and forget)."""
        now = time.monotonic()
        if self.board is not None and (force or now - self._reported >= REPORT_INTERVAL_S):
            self._reported = now
            self.board.report.remote(self.grower_id, self.tally.snapshot())
