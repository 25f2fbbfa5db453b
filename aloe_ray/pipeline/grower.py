"""The Ray Data stage that grows trees: an async callable class; a batch is a list of tree
positions in the run's `TreePlan`.

Each actor holds engine clients (clients of the shared engine deployments: no weights here) and grows
trees as asyncio tasks, at most `trees_in_flight` at once over all the batches it holds (Ray
Data hands it several): a slot freed by a finished tree goes to the next waiting tree at once,
so no batch's slowest tree idles the others' concurrency. A batch's trees are committed in
parts of `trees_per_part` consecutive trees, each as soon as its trees are grown; the parts of
a batch are the same on every try (a retried batch rewrites the same files).
"""

from __future__ import annotations

import asyncio
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
"""Tries of a part's commit (backoff 1, 2, 4, 8, 16 s) before the batch fails."""

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
        specs = [self.plan.spec(i) for i in batch.column("spec_index").to_pylist()]
        k = self.trees_per_part
        parts = await asyncio.gather(*(self._grow_part(specs[i:i + k]) for i in range(0, len(specs), k)))
        self._report(force=True)
        return {c: [v for part in parts for v in part[c]] for c in SUMMARY_COLUMNS}

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
            reason = f"commit failed after {COMMIT_ATTEMPTS} attempts (not written; a rerun grows it): " \
                     f"{type(exc).__name__}: {str(exc)[:500]}"
            summary["status"] = ["failed"] * len(results)
            summary["failure_reason"] = [reason] * len(results)
        summary["part"] = [part] * len(results)
        return summary

    async def _commit(self, results) -> str:
        """Commit the part, retrying a failed write (a transient S3 error): the part's file names
        derive from its tree ids, so a retry rewrites the same files."""
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                return await asyncio.to_thread(self.output.commit, results, self.fence)
            except Fenced:
                raise  # not ours to write any more: never retried
            except Exception:  # noqa: BLE001 - retried; the last failure is the caller's
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(min(COMMIT_BACKOFF_S * 2.0**attempt, 30.0))
        raise AssertionError("unreachable")

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
