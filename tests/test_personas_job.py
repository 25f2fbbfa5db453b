"""The persona-pool job end to end: real Ray, the bundled model, MiniLM embeddings; local output,
resume after the last committed round, the tree job reading its personas table, the reference
JSONL pools, `ray job submit` to S3 (moto), and bad input failing before anything loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from aloe_ray.personas.dedup import max_similarity
from aloe_ray.pipeline.persona_output import PoolOutput
from aloe_ray.pipeline.personas import MANIFEST_DIR
from aloe_ray.schema import PERSONAS, POOL_MEMBERS, POOL_ROUNDS
from aloe_ray.storage import S3Options
from conftest import REFERENCE, REPO, free_port, wait_for_port

# Tiny rounds: the point is the pipeline, not the bundled model's prose. No acceptance-rate stop,
# so the number of rounds is what the test sets.
SMALL = [
    "--profiles.requests_per_round=2", "--personalities.requests_per_round=2",
    "--profiles.new_per_request=4", "--personalities.new_per_request=4",
    "--profiles.min_acceptance_rate=0", "--personalities.min_acceptance_rate=0",
    "--profiles.min_words=8", "--personalities.min_words=8",
    "--profiles.tokens_per_item=20", "--personalities.tokens_per_item=20",  # 4 x 20 + 64 = 144 tokens a request
    "--benchmark.profiles=3", "--benchmark.personalities=2", "--pairing.per_profile=3",
]


def run_job(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "jobs" / "generate_personas.py"), *SMALL, *args]
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def check_pool(output: str, run_id: str, *, rounds: int, s3: S3Options | None = None, threshold: float = 0.6):
    """Tables in their schemas; stats consistent with the pool; the dedup invariant holds on the
    stored embeddings; the personas split as configured."""
    out = PoolOutput(output, run_id, s3)
    stats = out.read("rounds")
    assert stats.schema.equals(POOL_ROUNDS)
    rows = stats.to_pylist()
    assert sorted({(r["round"], r["kind"]) for r in rows}) == [(n, k) for n in range(rounds + 1)
                                                               for k in ("personality", "profile")]
    assert len(rows) == 2 * (rounds + 1)
    pools = {}
    for kind, table in (("profile", "profiles"), ("personality", "personalities")):
        members = out.read(table)
        assert members.schema.equals(POOL_MEMBERS)
        ids = members["member_id"].to_pylist()
        assert len(ids) == len(set(ids))
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["round"])
        assert mine[-1]["pool_size"] == members.num_rows == sum(r["accepted"] for r in mine)
        for r in mine[1:]:
            reasons = json.loads(r["rejection_reasons"])
            assert r["candidates"] - r["accepted"] == sum(reasons.values())
            assert r["rejected_duplicate"] == reasons.get("duplicate", 0)
            assert sum(r["similarity_histogram"]) == r["candidates"] - r["rejected_filter"]
            assert r["requests"] == 2 and r["asked"] == 8 and r["completion_tokens"] > 0
            assert r["acceptance_rate"] == pytest.approx(r["accepted"] / r["candidates"] if r["candidates"] else 0)
        by_round = sorted(members.to_pylist(), key=lambda m: (m["round"], m["request_index"] or 0))
        emb = np.array([m["embedding"] for m in by_round], np.float32)
        assert emb.shape[1] == 384 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
        n_seeds = sum(m["round"] == 0 for m in by_round)
        for i in range(n_seeds, len(by_round)):  # every generated member: <= threshold to all before it
            m = by_round[i]
            assert m["model"] == "smollm2-135m" and m["prompt_version"] == "aloe-ray/personas-v2"
            assert m["source"] == f"round-{m['round']}" and m["seed"] is not None
            true_max = float(max_similarity(emb[i:i + 1], emb[:i])[0])
            assert true_max <= threshold + 1e-5 and m["max_similarity"] == pytest.approx(true_max, abs=1e-4)
        pools[kind] = {m["text"]: e for m, e in zip(by_round, emb)}
    personas = out.read("personas")
    assert personas.schema.equals(PERSONAS)
    train = personas.filter(pc.equal(personas["split"], "train")).to_pylist()
    bench = personas.filter(pc.equal(personas["split"], "benchmark")).to_pylist()
    assert len(bench) == 3 * 2 and len({p["persona_id"] for p in train + bench}) == len(train) + len(bench)
    assert {p["profile"] for p in train}.isdisjoint({p["profile"] for p in bench})
    assert {p["personality"] for p in train}.isdisjoint({p["personality"] for p in bench})
    for key, kind in (("profile", "profile"), ("personality", "personality")):
        held = np.stack([pools[kind][t] for t in {p[key] for p in bench}])
        used = np.stack([pools[kind][t] for t in {p[key] for p in train}])
        assert max_similarity(used, held).max() <= 0.75 + 1e-6  # no benchmark near-duplicate in training
    assert all(sum(p["profile"] == q["profile"] for q in train) == 3 for p in train)
    return out, rows, train, bench


def test_local_run_resume_and_tree_job_reads_personas(tmp_path):
    out_dir = str(tmp_path / "data")
    proc = run_job(f"--output={out_dir}", "--run_id=local", "--profiles.max_rounds=1", "--personalities.max_rounds=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[personas] round 1 profile: 2 requests" in proc.stdout and "[personas] round 1 personality:" in proc.stdout
    assert f"{out_dir}/local" in proc.stdout and "dedup" in proc.stdout
    out, rows, train, bench = check_pool(out_dir, "local", rounds=1)
    seeds = {r["kind"]: r for r in rows if r["round"] == 0}
    assert seeds["profile"]["accepted"] == 20 and seeds["personality"]["accepted"] == 15  # training seeds only
    manifest = json.loads((tmp_path / "data" / "local" / MANIFEST_DIR / "manifest.json").read_text())
    assert manifest["counts"]["personas_benchmark"] == 6 and manifest["counts"]["personas_train"] == len(train)
    assert manifest["timing"]["dedup_s"] >= 0 and manifest["embedding_model"] == "all-MiniLM-L6-v2"
    assert manifest["split"]["profile"]["benchmark"] == 3 and manifest["config"]["run_id"] == "local"
    assert "max_rounds: 1" in (tmp_path / "data" / "local" / MANIFEST_DIR / "config.yaml").read_text()

    # the tree job grows trees from the training split of this personas table
    trees_out = str(tmp_path / "trees")
    tree = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "generate_trees.py"), f"--output={trees_out}", "--run_id=t",
         f"--personas.table={out_dir}/local/personas", "--personas.split=train", "--num_trees=1",
         "--tree.max_turns=1", "--roles.simulator.sampling.max_tokens=8", "--roles.inducer.sampling.max_tokens=8",
         "--roles.responder.sampling.max_tokens=8"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert tree.returncode == 0, tree.stderr[-3000:]
    from aloe_ray.pipeline.run_output import RunOutput

    grown = RunOutput(trees_out, "t").read("trees").to_pylist()
    assert len(grown) == 1 and grown[0]["persona_id"] == train[0]["persona_id"]

    # a crash could leave a pool part without its stats file: the rerun removes it, keeps rounds
    # 0-1 as committed and runs only round 2
    orphan = tmp_path / "data" / "local" / "profiles" / "round-00009.parquet"
    orphan.write_bytes((tmp_path / "data" / "local" / "profiles" / "round-00000.parquet").read_bytes())
    again = run_job(f"--output={out_dir}", "--run_id=local", "--profiles.max_rounds=2", "--personalities.max_rounds=2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 round(s) already committed" in again.stdout and "removed 1 uncommitted pool part" in again.stdout
    assert "round 1 profile" not in again.stdout and "round 2 profile" in again.stdout
    assert not orphan.exists()
    _, rows2, _, _ = check_pool(out_dir, "local", rounds=2)
    def key(r):
        return r["round"], r["kind"]

    assert sorted((r for r in rows2 if r["round"] <= 1), key=key) == sorted(rows, key=key)  # untouched

    # nothing left to do: no engine starts, the outputs stay as they were
    before = out.read("personas")
    third = run_job(f"--output={out_dir}", "--run_id=local", "--profiles.max_rounds=2", "--personalities.max_rounds=2")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "3 round(s) already committed" in third.stdout and "starting engine" not in third.stdout
    assert out.read("personas").equals(before)


@pytest.mark.skipif(not REFERENCE.exists(), reason="shared/aloe_reference not present")
def test_reference_jsonl_seeds_and_benchmark_files(tmp_path):
    proc = run_job(f"--output={tmp_path}", "--run_id=ref", "--profiles.max_rounds=0", "--personalities.max_rounds=0",
                   f"--seeds.profiles={REFERENCE / 'profile.jsonl'}",
                   f"--seeds.personalities={REFERENCE / 'personality.jsonl'}",
                   f"--benchmark.profiles_file={REFERENCE / 'profile_eval.jsonl'}",
                   f"--benchmark.personalities_file={REFERENCE / 'personality_eval.jsonl'}",
                   "--benchmark.profiles=20", "--benchmark.personalities=5", "--pairing.per_profile=10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "331 seed profiles, 71 seed personalities" in proc.stdout and "starting engine" not in proc.stdout
    out = PoolOutput(str(tmp_path), "ref")
    assert out.read("profiles").num_rows == 331 and out.read("personalities").num_rows == 71
    personas = out.read("personas")
    bench = personas.filter(pc.equal(personas["split"], "benchmark")).to_pylist()
    train = personas.filter(pc.equal(personas["split"], "train")).to_pylist()
    eval_profiles = set(json.loads(line) for line in (REFERENCE / "profile_eval.jsonl").read_text().splitlines())
    assert len(bench) == 100 and {p["profile"] for p in bench} == {" ".join(t.split()) for t in eval_profiles}
    manifest = json.loads((tmp_path / "ref" / MANIFEST_DIR / "manifest.json").read_text())
    split = manifest["split"]["profile"]
    # reference training profiles near-duplicating a benchmark one leave training
    assert split["train"] + split["dropped_near_benchmark"] == 331
    assert len({p["profile"] for p in train}) == split["train"]
    assert split["max_similarity_train_to_benchmark"] <= 0.75
    assert all(p["source"] == "benchmark-file/benchmark-file" for p in bench)


def test_requests_have_room_for_every_member_they_ask_for():
    """Each request's max_tokens comes from its m: m members of ~100 (profile) or ~70 (personality)
    tokens fit, so `asked` in the stats is what a reply can hold."""
    import asyncio

    import pyarrow as pa

    from aloe_ray.config import GeneratePersonasConfig, load_config
    from aloe_ray.engines.base import Completion
    from aloe_ray.personas.filters import CandidateFilter
    from aloe_ray.pipeline.persona_stages import MemberWriter

    cfg = GeneratePersonasConfig()
    assert (cfg.profiles.new_per_request, cfg.personalities.new_per_request) == (5, 5)
    assert (cfg.profiles.request_max_tokens(), cfg.personalities.request_max_tokens()) == (564, 414)
    big = load_config(GeneratePersonasConfig, ["--profiles.new_per_request=20", "--personalities.new_per_request=20"])
    assert (big.profiles.request_max_tokens(), big.personalities.request_max_tokens()) == (2064, 1464)

    seen = []

    class Recorder:
        async def chat(self, requests, affinity=None):
            seen.extend(requests)
            return [Completion("1. She is 40.", "stop", 10, 5) for _ in requests]

    writer = MemberWriter(Recorder(), cfg.generator, {k: CandidateFilter(min_words=1) for k in ("profile", "personality")},
                          {"profile": 564, "personality": 414})
    rows = [{"kind": kind, "round": 1, "index": i, "seed": 7, "examples": ["x"], "new": 5}
            for i, kind in enumerate(("profile", "personality"))]

    async def run():
        return [b async for b in writer(pa.Table.from_pylist(rows))]

    out = asyncio.run(run())[0]
    assert [r.sampling.max_tokens for r in seen] == [564, 414] and out["cand_text"] == [["She is 40."]] * 2
    assert "Write 5 new profiles" in seen[0].messages[0]["content"]


def test_resume_refuses_other_settings(tmp_path, capsys):
    """A rerun of a run_id that would change what its committed rounds depend on (embedding model,
    threshold, seeds, filters, k/m) fails with exit 2 before anything is written or started."""
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import generate_personas
    finally:
        sys.path.remove(str(REPO / "jobs"))
    import ray

    from aloe_ray.config import ConfigError
    from aloe_ray.pipeline.personas import SETTINGS_FILE, load_seed_pool, pool_settings, s3_options

    base = [f"--output={tmp_path}", "--run_id=r"]
    cfg = generate_personas.parse_config(base)
    seeds, label = load_seed_pool(cfg, s3_options(cfg))
    out = PoolOutput(str(tmp_path), "r")
    settings = pool_settings(cfg, seeds, label)
    out.write_json(SETTINGS_FILE, settings)
    written = (tmp_path / "r" / SETTINGS_FILE).read_text()
    def check_resume(out, settings):
        out.pin_settings(SETTINGS_FILE, settings, made="built", instead="another --run_id")

    check_resume(out, settings)  # same settings: resumes
    check_resume(out, pool_settings(generate_personas.parse_config(
        [*base, "--profiles.max_rounds=9", "--profiles.target_size=500", "--benchmark.profiles=4"]), seeds, label))
    cases = [
        (["--similarity_threshold=0.7"], "similarity_threshold"),
        (["--profiles.examples_per_request=3"], "kinds.profile.examples_per_request"),
        (["--personalities.new_per_request=4"], "kinds.personality.new_per_request"),
        (["--profiles.min_words=30"], "kinds.profile.filter.min_words"),
        (["--embedding.max_seq_length=128"], "embedding.max_seq_length"),
        (["--seed=1"], "seed"),
    ]
    for argv, key in cases:
        assert generate_personas.main([*base, *argv]) == 2, argv
        err = capsys.readouterr().err
        assert f"{tmp_path}/r was built with other settings ({key} differ)" in err, (argv, err)
    other_seeds = dict(seeds, profile=seeds["profile"][:-1])
    with pytest.raises(ConfigError, match=r"seeds.counts.profile, seeds.sha256 differ"):
        check_resume(out, pool_settings(cfg, other_seeds, label))
    assert not ray.is_initialized()
    assert (tmp_path / "r" / SETTINGS_FILE).read_text() == written
    assert sorted(p.name for p in (tmp_path / "r" / MANIFEST_DIR).iterdir()) == ["settings.json"]


def test_bad_input_fails_before_anything_loads(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import generate_personas
    finally:
        sys.path.remove(str(REPO / "jobs"))
    import ray

    bad = tmp_path / "p.jsonl"
    bad.write_text('"ok"\n{nope\n')
    cases = [
        ([f"--seeds.profiles={bad}", f"--seeds.personalities={bad}"], f"{bad}:2: not a JSON string"),
        (["--seeds.profiles=/nonexistent/p.jsonl", "--seeds.personalities=/nonexistent/q.jsonl"], "persona file not found"),
        (["--benchmark.profiles=20"], "benchmark.profiles=20 would hold out all 20 seed profiles"),
        (["--benchmark.profiles=0"], "both 0 (no benchmark) or both > 0"),
        (["--profiles.min_words=50", "--profiles.max_words=10"], "min_words (50) is above max_words (10)"),
        (["--profiles.examples_per_requset=3"], "did you mean 'examples_per_request'"),
        (["--generator.engine=big"], "generator.engine is 'big', but engines has only ['default']"),
        (["--generator.sampling.max_tokens=384", "--profiles.new_per_request=20", "--profiles.tokens_per_item=100"],
         "profiles.new_per_request=20 x profiles.tokens_per_item=100 needs 2064 tokens per request, above "
         "generator.sampling.max_tokens=384"),
        (["--embedding.model=/nonexistent/minilm"], "embedding model '/nonexistent/minilm' is neither bundled"),
        (["--engines.default.model=/nonexistent/llm"], "neither a bundled model"),
        (["--seeds.table=/nonexistent/personas"], "personas table not found"),
        ([f"--benchmark.profiles_file={bad}"], "benchmark.profiles_file and benchmark.personalities_file go together"),
    ]
    for argv, expected in cases:
        assert generate_personas.main([f"--output={tmp_path}", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert expected in err, (argv, err)
    assert not ray.is_initialized()
    assert [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]  # nothing written


@pytest.fixture(scope="module")
def ray_cluster():
    """`ray start --head` on loopback, token auth on (as Ray 2.60 defaults)."""
    port, dash = free_port(), free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    ray_bin = f"{venv_bin}/ray"
    subprocess.run([ray_bin, "start", "--head", "--num-cpus=2", f"--port={port}", f"--dashboard-port={dash}",
                    "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=180)
    wait_for_port(dash, timeout=120)
    yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "env": env, "ray": ray_bin}
    subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_ray_job_submit_to_s3_and_resume(ray_cluster, s3_bucket, s3_env):
    output = f"s3://{s3_bucket}/runs"
    cmd = [ray_cluster["ray"], "job", "submit", "--address", ray_cluster["dashboard"], "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps({"env_vars": s3_env}), "--",
           "python", "jobs/generate_personas.py", *SMALL, f"--output={output}", "--run_id=submitted",
           "--profiles.max_rounds=1", "--personalities.max_rounds=1"]
    proc = subprocess.run(cmd, cwd=REPO, env=ray_cluster["env"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "succeeded" in proc.stdout and "[personas] round 1 profile" in proc.stdout  # progress in job logs
    check_pool(output, "submitted", rounds=1)
    # resumable on S3 too: a rerun finds both rounds committed
    again = run_job(f"--output={output}", "--run_id=submitted", "--profiles.max_rounds=1",
                    "--personalities.max_rounds=1", f"--ray.address={ray_cluster['address']}", env=ray_cluster["env"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 round(s) already committed" in again.stdout and "starting engine" not in again.stdout
