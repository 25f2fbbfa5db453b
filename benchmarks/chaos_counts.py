"""What `benchmarks/chaos.py` counts in a run root, and its table.

A run is exact when the committed reader and the raw files alike hold every requested tree
once, 'ok', with exactly `num_nodes` nodes, no node twice and no node of a tree without a trees
row. The raw files are every Parquet file under nodes/ and trees/ (what a reader of the folders
sees); the committed view is `RunOutput.committed`, the one reader the jobs use.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

COUNTS = ("unique", "ok", "dup_trees", "dup_nodes", "mismatch", "missing", "orphans")
"""Per view: unique tree ids; of them 'ok'; tree rows beyond one per id; node rows beyond one per
node id; ok trees whose nodes are not num_nodes many (of them: with no node at all); node rows
whose tree has no trees row."""


def counts(trees: pa.Table, nodes: pa.Table) -> dict:
    ids, status, num = (trees[c].to_pylist() for c in ("tree_id", "status", "num_nodes"))
    unique = set(ids)
    ok = {t: n for t, s, n in zip(ids, status, num) if s == "ok"}
    per_tree = Counter(nodes["tree_id"].to_pylist())
    node_ids = nodes["node_id"].to_pylist()
    return {"unique": len(unique), "ok": len(ok), "dup_trees": len(ids) - len(unique),
            "dup_nodes": len(node_ids) - len(set(node_ids)),
            "mismatch": sum(per_tree[t] != n for t, n in ok.items()),
            "missing": sum(per_tree[t] == 0 for t in ok),
            "orphans": sum(c for t, c in per_tree.items() if t not in unique)}


def exact(c: dict, requested: int) -> bool:
    return c["unique"] == c["ok"] == requested and not any(c[k] for k in COUNTS[2:])


def _read(out, table: str, columns: list[str]) -> tuple[pa.Table, list[str]]:
    """Every part file of a table (the columns named), and the files' names."""
    from aloe_ray import storage

    uris = storage.list_files(out.table(table), ".parquet", out.s3)
    tables = []
    for uri in uris:
        fs, path = storage.filesystem_for(uri, out.s3)
        tables.append(pq.read_table(path, filesystem=fs, columns=columns))
    schema = out.SCHEMAS[table]
    empty = pa.schema([schema.field(c) for c in columns]).empty_table()
    return (pa.concat_tables(tables, promote_options="default") if tables else empty), [u.rsplit("/", 1)[-1] for u in uris]


def _temp_files(out) -> int:
    """Hidden temporary files of atomic writes (`.tmp-*`) left in nodes/ and trees/."""
    import pyarrow.fs as pafs

    from aloe_ray import storage

    found = 0
    for table in ("nodes", "trees"):
        fs, path = storage.filesystem_for(out.table(table), out.s3)
        found += sum(1 for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
                     if i.type == pafs.FileType.File and i.base_name.startswith(".tmp-"))
    return found


def audit(out, requested: int) -> dict:
    """The raw and the committed counts of a run root (`RunOutput`)."""
    trees, tree_files = _read(out, "trees", ["tree_id", "status", "num_nodes"])
    nodes, node_files = _read(out, "nodes", ["tree_id", "node_id"])
    raw = counts(trees, nodes)
    row = {"requested": requested, "raw": raw, "orphan_parts": len(set(node_files) - set(tree_files)),
           "temp_files": _temp_files(out), "committed": None, "broken": None}
    ok = exact(raw, requested) and not row["orphan_parts"]
    if hasattr(out, "committed"):
        broken: list[str] = []
        parts = list(out.committed(["tree_id", "status", "num_nodes"], ["tree_id", "node_id"], broken=broken))
        c_trees = pa.concat_tables([p.trees for p in parts]) if parts else trees.schema.empty_table()
        c_nodes = pa.concat_tables([p.nodes for p in parts]) if parts else nodes.schema.empty_table()
        row["committed"], row["broken"] = counts(c_trees, c_nodes), len(broken)
        ok = ok and exact(row["committed"], requested) and not broken
    row["exact"] = ok
    return row


def work_wasted(config_path, run_id: str, seeds: dict[str, int]) -> dict:
    """Trees grown (at least partly) more than once, from the endpoint's count of requests by seed:
    a tree's first request is its turn-1 simulator call, attempt 0 (aloe_ray/trees/grow.py
    derives every request's seed from tree, path, role and attempt)."""
    from aloe_ray.config import GenerateTreesConfig, load_config
    from aloe_ray.personas.loaders import load_personas
    from aloe_ray.trees.spec import TreePlan, derive_seed

    cfg = load_config(GenerateTreesConfig, ["--config", str(config_path), f"--run_id={run_id}"])
    plan = TreePlan(run_id, tuple(load_personas(cfg.personas)), cfg.samples_per_persona, cfg.seed, cfg.num_trees)
    starts = [seeds.get(str(derive_seed(plan.spec(i).seed, "u1", "simulator", 0)), 0) for i in range(len(plan))]
    return {"regrown": sum(s > 1 for s in starts), "growths": sum(starts), "never_started": sum(s == 0 for s in starts),
            "calls": sum(seeds.values()), "calls_repeated": sum(v - 1 for v in seeds.values() if v > 1)}


def _pair(row: dict, key: str) -> str:
    c = row["committed"]
    return f"{row['raw'][key]}/{'-' if c is None else c[key]}"


def print_table(rows: list[dict], args, probe: dict, wall_s: float) -> None:
    import os

    print(f"\nchaos: {args.trees} trees per scenario, {args.turns} turns, trees_per_part 4 (the default), "
          f"endpoint +{args.latency_ms:g} ms a call, {args.trees_in_flight} trees in flight, "
          f"ray start cluster of {args.cluster_cpus} CPUs, {os.cpu_count()} CPU cores; {wall_s:.0f}s in all")
    print("pairs are raw files/committed reader; dup = rows beyond one per id; nodes!=n = ok trees whose nodes "
          "are not num_nodes many (of them with none); orphan = node rows of no tree; regrown = trees grown "
          "more than once (calls repeated); writes = nodes files written (commit attempts)")
    head = (f"{'scenario':<16}{'storage':<8}{'req':>5}{'unique':>8}{'ok':>8}{'dup trees':>10}{'dup nodes':>10}"
            f"{'nodes!=n (none)':>17}{'orphan':>8}{'orph parts':>11}{'broken':>7}{'regrown':>8}{'calls rep':>10}"
            f"{'writes':>7}{'drivers':>8}{'s':>5}  exact")
    print(head)
    for r in rows:
        miss = f"{_pair(r, 'mismatch')} ({r['raw']['missing']})"
        label = r["scenario"] + ("" if r["fenced"] else "*")
        verdict = "yes" if r["exact"] and r["race_ok"] else ("NO" if r["fenced"] else "no (control)")
        print(f"{label:<16}{r['storage']:<8}{r['requested']:>5}{_pair(r, 'unique'):>8}{_pair(r, 'ok'):>8}"
              f"{_pair(r, 'dup_trees'):>10}{_pair(r, 'dup_nodes'):>10}{miss:>17}{_pair(r, 'orphans'):>8}"
              f"{r['orphan_parts']:>11}{'-' if r['broken'] is None else r['broken']:>7}{r['regrown']:>8}"
              f"{r['calls_repeated']:>10}{r['nodes_writes']:>7}{r['drivers']:>8}{r['wall_s']:>5.0f}  {verdict}")
    print("* ALOE_UNSAFE_NO_FENCE=1: the control, what the fence prevents")
    lifetimes = [t for r in rows for t in r["grower_lifetimes"]]
    if lifetimes:
        print(f"growers outlived a SIGKILLed driver (ray start cluster, joined directly) by {min(lifetimes):.2f}-"
              f"{max(lifetimes):.2f}s over {len(lifetimes)} kills")
    if probe:
        print("an actor outlived its SIGKILLed driver by: " + ", ".join(f"{k} {v}" for k, v in probe.items()))
    for r in rows:
        extra = [f"{r['temp_files']} temp files left"] if r["temp_files"] else []
        if r["never_started"]:
            extra.append(f"{r['never_started']} trees never seen at the endpoint (the seed rule changed?)")
        print(f"  {r['scenario']} on {r['storage']}: " + "; ".join([*r["notes"], *extra]))
