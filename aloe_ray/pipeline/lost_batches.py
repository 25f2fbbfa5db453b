"""Batches Ray Data gave up on: their trees end up failed in the trees table, never missing.

A grower actor that dies under a batch (out of memory, a crash) is restarted by Ray, and the
batch is tried again `pipeline.batch_retries` times: the actor's `max_task_retries`, where Ray
Data's own default retries forever (a batch that always kills its grower hangs the run). Then Ray
Data drops the batch (the Dataset runs with `max_errored_blocks=-1`, so the other batches go on)
and logs why (`RayDataErrors` keeps those lines). The driver tells the lost batches by the
positions that never came back in a summary, and commits their trees as failed with the reason,
under 'lost-' part names, skipping the parts a try committed before its grower died. A rerun
grows them again (`pipeline.retry_failed`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from aloe_ray.pipeline.lease import Fence
from aloe_ray.pipeline.run_output import RunOutput, part_name
from aloe_ray.trees import TreePlan, TreeShape
from aloe_ray.trees.grow import lost_tree

ERRORS_KEPT = 20


class RayDataErrors(logging.Handler):
    """While installed (a context manager): the errors Ray Data logs, with their exception, for
    the blocks (batches) it drops."""

    LOGGER = "ray.data"

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and len(self.errors) < ERRORS_KEPT:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            self.errors.append(f"{type(exc).__name__}: {' '.join(lines)[:600]}")

    def summary(self) -> str:
        distinct = list(dict.fromkeys(self.errors))
        return " | ".join(distinct[:3]) or "no error was logged; see the Ray logs"

    def __enter__(self) -> RayDataErrors:
        logging.getLogger(self.LOGGER).addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)


def record_lost(out: RunOutput, plan: TreePlan, batches: Iterable[pa.Table], returned: np.ndarray, *,
                trees_per_part: int, shape: TreeShape, models: dict[str, str], reason: str,
                fence: Fence | None) -> list[tuple[str, str]]:
    """Commit as failed the trees of every batch (`batches`: as the growers got them) none of
    whose positions came back (`returned`, a bool per plan position); returns (tree id, reason)
    of each tree so recorded. A part is the grower's (`trees_per_part` consecutive trees of its
    batch): one a try committed before its grower died is left as it is."""
    lost: list[tuple[str, str]] = []
    for batch in batches:
        positions = batch.column("spec_index").to_numpy()
        if returned[positions].any():
            continue
        for i in range(0, len(positions), trees_per_part):
            specs = [plan.spec(int(j)) for j in positions[i:i + trees_per_part]]
            if out.has_part(part_name([s.tree_id for s in specs])):
                continue
            out.commit([lost_tree(s, shape, models, reason) for s in specs], fence, prefix="lost-")
            lost += [(s.tree_id, reason) for s in specs]
    return lost
