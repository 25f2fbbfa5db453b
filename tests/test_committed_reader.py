"""Every reader of a tree run honours the commit (`RunOutput.committed`): an orphan nodes part
(a crash between the two writes) is never read, a tree two committed parts hold is read once and
compacted to one row, and an 'ok' tree whose nodes are missing or short is neither read nor kept
by recovery. Real files on disk and on S3 (moto's server); trees from the scripted engine."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from aloe_ray import storage
from aloe_ray.config import load_config
from aloe_ray.config.train import TrainSFTConfig
from aloe_ray.trees.spec import tree_hashes
from aloe_ray.pipeline.run_output import RunOutput
from aloe_ray.pipeline.train import rows_from_trees
from aloe_ray.storage import S3Options
from aloe_ray.train.datasets import sft_examples
from test_export_dataset import run_export, write_run
from test_run_safety import _scripted_results


def _sft_rows(root: str, s3=None) -> pa.Table:
    cfg = load_config(TrainSFTConfig, [f"--data.trees={root}"])
    return rows_from_trees(root, "sft", cfg, s3, Counter())


def _read_all(out: RunOutput, broken: list[str] | None = None) -> tuple[pa.Table, pa.Table]:
    parts = list(out.committed(broken=broken))
    return (pa.concat_tables([p.trees for p in parts], promote_options="default"),
            pa.concat_tables([p.nodes for p in parts], promote_options="default"))


def _orphan(out: RunOutput, results) -> str:
    """What a crash between a part's two writes leaves: its nodes file, no trees file."""
    part = out.commit(results)
    storage.delete_file(storage.join(out.table("trees"), part), out.s3)
    return part


def test_an_orphan_nodes_part_is_read_by_neither_export_nor_training(tmp_path):
    from datasets import load_from_disk

    out = write_run(str(tmp_path), "r1")  # 5 trees in two committed parts
    committed_nodes = out.read("nodes").to_pylist()
    expected = sorted(r["example_id"] for r in sft_examples(committed_nodes))
    # A first attempt grew trees 3..5 and crashed after their nodes file; the rerun committed
    # them in other parts. Read raw, those trees now have two first user messages.
    orphan = storage.join(out.table("nodes"), "part-orphan.parquet")
    storage.write_parquet(orphan, out.read("nodes").filter(pc.is_in(out.read("nodes")["tree_id"], pa.array(
        sorted({n["tree_id"] for n in committed_nodes})[2:]))))

    proc = run_export(f"--trees={out.root}", f"--output={tmp_path / 'hf'}")
    assert proc.returncode == 0, proc.stderr[-3000:]  # was: "expected one first user message, found 2"
    assert sorted(load_from_disk(str(tmp_path / "hf" / "sft"))["train"]["example_id"]) == expected
    facts = json.loads((tmp_path / "hf" / "export.json").read_text())
    assert facts["runs"][0]["trees_ok"] == 5 and facts["runs"][0]["trees_nodes_incomplete"] == 0
    assert sorted(_sft_rows(out.root)["example_id"].to_pylist()) == expected

    trees, nodes = _read_all(out)
    assert trees.num_rows == 5 and nodes.num_rows == len(committed_nodes)
    assert storage.exists(orphan)  # readers leave it alone; the tree job's recovery removes it
    assert out.recover(retry_failed=True).orphan_parts_removed == 1 and not storage.exists(orphan)


def test_duplicate_committed_parts_are_read_once_and_compacted_to_one_row(tmp_path):
    """A writer that lost the run committed trees 2..5 after the new owner had grown 0..3: two
    committed parts hold trees 2 and 3."""
    out = RunOutput(str(tmp_path), "c")
    results = _scripted_results(6)
    bigger, smaller = out.commit(results[0:4]), out.commit(results[2:5])
    assert out.read("trees").num_rows == 7  # raw: trees 2 and 3 twice

    trees, nodes = _read_all(out)
    ids = trees["tree_id"].to_pylist()
    assert sorted(ids) == sorted(r.tree["tree_id"] for r in results[:5])
    assert nodes.num_rows == sum(r.tree["num_nodes"] for r in results[:5])
    assert len(set(nodes["node_id"].to_pylist())) == nodes.num_rows
    by_part = {p.name: p.trees["tree_id"].to_pylist() for p in out.committed(["tree_id"], ())}
    assert len(by_part[bigger]) == 4 and by_part[smaller] == [results[4].tree["tree_id"]]  # more trees wins
    assert _sft_rows(out.root).num_rows == 5

    assert out.compact(trees_per_file=16) == 2
    raw_trees, raw_nodes = out.read("trees"), out.read("nodes")
    assert sorted(raw_trees["tree_id"].to_pylist()) == sorted(ids)  # one row a tree
    assert raw_nodes.num_rows == nodes.num_rows == len(set(raw_nodes["node_id"].to_pylist()))
    names = {table: [u.rsplit("/", 1)[-1] for u in storage.list_files(out.table(table), ".parquet")]
             for table in ("nodes", "trees")}
    assert names["nodes"] == names["trees"] and len(names["trees"]) == 1 and names["trees"][0].startswith("compact-")


def test_compaction_groups_parts_by_bytes_as_well_as_trees(tmp_path):
    out = RunOutput(str(tmp_path), "b")
    results = _scripted_results(8)
    for i in range(0, 8, 2):
        out.commit(results[i:i + 2])
    largest = max(f.stat().st_size for f in (tmp_path / "b" / "nodes").glob("*.parquet"))
    # Room for every part by trees, for two parts' nodes by bytes: two merged parts, not one.
    assert out.compact(trees_per_file=100, max_bytes=int(largest * 2.5)) == 4
    assert len(list((tmp_path / "b" / "trees").glob("compact-*.parquet"))) == 2
    assert sorted(out.read("trees")["tree_id"].to_pylist()) == sorted(r.tree["tree_id"] for r in results)


def test_an_ok_tree_whose_nodes_are_missing_or_short_is_not_read_and_recovery_drops_it(tmp_path):
    from serving.trees_view import TreeRun

    out = RunOutput(str(tmp_path), "m")
    results = _scripted_results(6)
    missing, short, whole = (out.commit(results[i:i + 2]) for i in range(0, 6, 2))
    # A zombie's commit after recovery removed its nodes file as an orphan: trees, no nodes.
    storage.delete_file(storage.join(out.table("nodes"), missing))
    short_uri = storage.join(out.table("nodes"), short)
    lost_node = results[2].nodes[-1]["node_id"]  # a nodes file with one node of tree 2 too few
    storage.write_parquet(short_uri, out.read("nodes").filter(pc.and_(
        pc.is_in(out.read("nodes")["tree_id"], pa.array([r.tree["tree_id"] for r in results[2:4]])),
        pc.not_equal(out.read("nodes")["node_id"], lost_node))))
    bad = sorted(r.tree["tree_id"] for r in results[0:3])
    good = sorted({r.tree["tree_id"] for r in results} - set(bad))

    broken: list[str] = []
    trees, nodes = _read_all(out, broken)
    assert sorted(broken) == bad and sorted(trees["tree_id"].to_pylist()) == good
    assert set(nodes["tree_id"].to_pylist()) == set(good)
    assert nodes.num_rows == sum(r.tree["num_nodes"] for r in results if r.tree["tree_id"] in good)
    dropped = Counter()
    cfg = load_config(TrainSFTConfig, [f"--data.trees={out.root}"])
    assert rows_from_trees(out.root, "sft", cfg, None, dropped).num_rows == 3
    assert dropped["tree_nodes_incomplete"] == 3
    view = TreeRun(out.root)
    assert [t["tree_id"] for t in view.trees()] == good
    with pytest.raises(KeyError, match="nodes are incomplete"):
        view.tree(bad[0])
    num_nodes = {r.tree["tree_id"]: r.tree["num_nodes"] for r in results}
    assert len(view.tree(good[0])["nodes"]) == num_nodes[good[0]]

    state = out.recover(retry_failed=True)
    assert state.broken_trees_dropped == 3 and list(state.ok) == sorted(tree_hashes(good))  # reported, and grown again
    assert sorted(out.read("trees")["tree_id"].to_pylist()) == good
    assert not storage.exists(storage.join(out.table("trees"), missing))
    # the short tree's leftover nodes went with its row
    assert set(storage.read_parquet(short_uri)["tree_id"].to_pylist()) == {results[3].tree["tree_id"]}
    again: list[str] = []
    assert _read_all(out, again)[0].num_rows == 3 and again == []
    assert out.recover(retry_failed=True).broken_trees_dropped == 0


def test_recovery_removes_stale_temporary_files(tmp_path):
    out = RunOutput(str(tmp_path), "t")
    out.commit(_scripted_results(2))
    stale = [tmp_path / "t" / table / f".tmp-{'0' * 32}-part-x.parquet" for table in ("nodes", "trees")]
    for path in stale:
        path.write_bytes(b"half a file")
    state = out.recover(retry_failed=True)
    assert state.temp_files_removed == 2 and not any(p.exists() for p in stale)
    assert state.orphan_parts_removed == 0 and len(state.ok) == 2 and out.read("trees").num_rows == 2


def test_the_reader_on_s3_skips_orphans_and_duplicates_and_compacts(s3_bucket):
    s3 = S3Options()
    out = RunOutput(f"s3://{s3_bucket}/runs", "s", s3)
    results = _scripted_results(5)
    out.commit(results[0:3])
    out.commit(results[2:5])  # tree 2 in two committed parts
    _orphan(out, results[1:4])  # trees 1..3 again in a nodes part that was never committed
    expected = sorted(r.tree["tree_id"] for r in results)

    trees, nodes = _read_all(out)
    assert sorted(trees["tree_id"].to_pylist()) == expected
    assert nodes.num_rows == sum(r.tree["num_nodes"] for r in results)
    [one] = out.committed(["tree_id", "num_nodes"], ["node_id"], tree_id=results[2].tree["tree_id"])
    assert one.trees.num_rows == 1 and one.nodes.num_rows == results[2].tree["num_nodes"]
    assert one.nodes.column_names == ["node_id"]
    assert _sft_rows(out.root, s3).num_rows == 5

    state = out.recover(retry_failed=True)
    assert state.orphan_parts_removed == 1 and state.broken_trees_dropped == 0 and list(state.ok) == sorted(tree_hashes(expected))
    assert out.compact(trees_per_file=10) == 2
    assert sorted(out.read("trees")["tree_id"].to_pylist()) == expected
    assert out.read("nodes").num_rows == nodes.num_rows
