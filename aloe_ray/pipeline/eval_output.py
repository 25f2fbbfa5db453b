"""The folder of one evaluation, `<output>/<run_id>/eval/<name>/`, and its exactly-once commits.

Rollouts are written in parts: `turns/part-X.parquet`, then `rollouts/part-X.parquet`. Each file
is written atomically and the rollouts part is the commit (as in the tree job's RunOutput): a
turns part without its rollouts part is an orphan of a crash and is deleted on the next start.
X is a hash of the part's rollout ids, so a retried Ray task rewrites the same files. A persona
is finished once a committed rollouts part holds it with status 'ok'. A failed rollout's part
holds the turns it completed; retrying it removes them (turns first, then the rollouts row), so a
rollout id never has two sets of turns.
"""

from __future__ import annotations


import pyarrow as pa
import pyarrow.compute as pc

from aloe_ray import storage
from aloe_ray.eval.rollout import RolloutResult
from aloe_ray.pipeline.run_root import RunRoot, rewrite_part
from aloe_ray.schema import EVAL_ROLLOUTS, EVAL_TURNS
from aloe_ray.trees.spec import stable_id

SCHEMAS = {"turns": EVAL_TURNS, "rollouts": EVAL_ROLLOUTS}


def eval_root(output: str, run_id: str, name: str) -> str:
    return storage.join(output, run_id, "eval", name)


class EvalOutput(RunRoot):
    SCHEMAS = SCHEMAS

    def commit(self, results: list[RolloutResult]) -> str:
        """Write one part (turns, then rollouts) for these finished rollouts; returns its name."""
        part = "part-" + stable_id(*sorted(r.rollout["rollout_id"] for r in results)) + ".parquet"
        turns = [t for r in results for t in r.turns]
        if turns:
            storage.write_parquet(self.file(f"turns/{part}"), pa.Table.from_pylist(turns, EVAL_TURNS), self.s3)
        rollouts = pa.Table.from_pylist([r.rollout for r in results], EVAL_ROLLOUTS)
        storage.write_parquet(self.file(f"rollouts/{part}"), rollouts, self.s3)
        return part

    def recover(self, *, retry_failed: bool) -> tuple[set[str], int]:
        """(ids of finished rollouts, orphan parts removed). With `retry_failed`, failed rollouts'
        rows are dropped so they run again; else they count as finished."""
        parts = {self._name(u): u for u in storage.list_files(self.file("rollouts"), ".parquet", self.s3)}
        orphans = 0
        for uri in storage.list_files(self.file("turns"), ".parquet", self.s3):
            if self._name(uri) not in parts:
                storage.delete_file(uri, self.s3)
                orphans += 1
        done: set[str] = set()
        for uri in parts.values():
            table = storage.read_parquet(uri, self.s3, schema=EVAL_ROLLOUTS)
            failed = pc.equal(table["status"], "failed")
            done.update(table.filter(pc.invert(failed))["rollout_id"].to_pylist())
            if not retry_failed:
                done.update(table.filter(failed)["rollout_id"].to_pylist())
            elif pc.any(failed).as_py():
                # the turns first: a crash in between leaves the failed rows to be dropped next time
                failed_ids = pa.array(table.filter(failed)["rollout_id"].to_pylist(), pa.string())
                turns_uri = self.file(f"turns/{self._name(uri)}")
                if storage.exists(turns_uri, self.s3):
                    turns = storage.read_parquet(turns_uri, self.s3, schema=EVAL_TURNS)
                    rewrite_part(turns_uri, turns.filter(pc.invert(pc.is_in(turns["rollout_id"], value_set=failed_ids))),
                             self.s3)
                rewrite_part(uri, table.filter(pc.invert(failed)), self.s3)
        return done, orphans
