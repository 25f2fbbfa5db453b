"""Interactive evaluation over real HTTP against the real Serve app on the bundled model (one app
for the module), and the page in a real headless Chromium (Debian's `chromium`, driven by
Playwright's Python package; no browser download). Turns and max_tokens are tiny."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from aloe_ray.schema import EVAL_TURNS, NODES
from aloe_ray.storage import S3Options
from conftest import REPO, free_port
from test_serving import make_lora_adapter

KEY = "interactive-key-7"
AUTH = {"authorization": f"Bearer {KEY}"}


def make_tree_run(root: Path) -> str:
    """A small tree run (scripted engine fixture: 2 trees x 2 turns) with one node column the
    schema does not know (as a run that records extra quality flags)."""
    from aloe_ray import storage
    from aloe_ray.engines.base import Sampling
    from aloe_ray.personas.loaders import seed_personas
    from aloe_ray.pipeline.run_output import RunOutput
    from aloe_ray.trees import RoleBinding, TreeRoles, TreeShape, grow_tree, make_tree_specs
    from scripted_engine import ScriptedEngine

    engine = ScriptedEngine()
    b = RoleBinding(engine, Sampling(0.7, 0.95, 16))
    specs = make_tree_specs("tree-run", seed_personas(per_profile=1, seed=0)[:2])
    results = [asyncio.run(grow_tree(s, TreeRoles(b, b, b, b), TreeShape(max_turns=2, policy="chosen"))) for s in specs]
    out = RunOutput(str(root), "tree-run")
    part = out.commit(results)
    nodes_uri = storage.join(out.table("nodes"), part)
    nodes = storage.read_parquet(nodes_uri, schema=NODES)
    note = pa.array(["repeats turn 1" if r == "user" else None for r in nodes["role"].to_pylist()], pa.string())
    storage.write_parquet(nodes_uri, nodes.append_column("quality_note", note))
    return out.root


@pytest.fixture(scope="module")
def app(tmp_path_factory, bundled_model_path):
    import ray
    from ray import serve

    from serving.app import build_app

    tmp = tmp_path_factory.mktemp("interactive")
    os.environ["ALOE_INTERACTIVE_KEY"] = KEY
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="aloe-interactive-test",
             log_to_driver=False)  # a new instance even if a stray cluster is up
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"model": "smollm2-135m", "served_model_name": "aloe-base", "api_key_env": "ALOE_INTERACTIVE_KEY",
            "max_tokens_limit": 64, "default_max_tokens": 8, "max_replicas": 1,
            "adapters": [{"name": "aloe-lora", "path": make_lora_adapter(tmp / "adapter")}],
            # the judge on an engine of its own (the same weights from their folder: a model
            # other than the served one), which the app hosts as a deployment of its own
            "interactive": {"output": str(tmp / "out"), "trees_root": make_tree_run(tmp / "trees"),
                            "engines": {"default": {}, "judging": {"model": bundled_model_path, "num_cpus": 0.5}},
                            "judge": {"engine": "judging", "sampling": {"temperature": 0.0, "max_tokens": 32}},
                            "simulator": {"sampling": {"temperature": 0.9, "max_tokens": 10}},
                            "reply": {"max_tokens": 8}, "max_turns": 6, "max_sessions": 8}}
    serve.run(build_app(args), name="aloe-interactive", route_prefix="/")
    yield {"url": f"http://127.0.0.1:{port}", "out": tmp / "out", "tmp": tmp}
    serve.shutdown()
    ray.shutdown()


def call(app, method, path, body=None, headers=AUTH, **kw):
    return httpx.request(method, app["url"] + path, json=body, headers=headers, timeout=300, **kw)


def ok(resp, status=200):
    assert resp.status_code == status, resp.text
    return resp.json()


def create(app, **body):
    body.setdefault("models", ["aloe-base"])
    return ok(call(app, "POST", "/interactive/sessions", body), 201)


def first_persona(app):
    return ok(call(app, "GET", "/interactive/personas"))["personas"][0]["persona_id"]


def test_page_loads_without_key_and_the_api_needs_it(app, bundled_model_path):
    page = httpx.get(app["url"] + "/", timeout=30)
    assert page.status_code == 200 and "interactive evaluation" in page.text and "/static/app.js" in page.text
    assert "https://" not in page.text  # nothing from a CDN
    assert httpx.get(app["url"] + "/static/app.js", timeout=30).text.startswith("// The interactive")
    denied = call(app, "GET", "/interactive/options", headers={})
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
    opts = ok(call(app, "GET", "/interactive/options"))
    assert opts["models"] == ["aloe-base", "aloe-lora"] and opts["roles"] == {"simulator": "aloe-base", "judge": bundled_model_path}
    assert len(ok(call(app, "GET", "/interactive/personas"))["personas"]) == 100
    schema = httpx.get(app["url"] + "/openapi.json", timeout=30).json()
    assert "/interactive/sessions" in schema["paths"] and "/interactive/sessions/{session_id}/run" in schema["paths"]
    assert httpx.get(app["url"] + "/docs", timeout=30).status_code == 200


@pytest.mark.parametrize("body, status, fragment", [
    ({"models": ["nope"], "persona_id": "x"}, 404, "model 'nope' not found"),
    ({"models": []}, 400, "models"),
    ({"models": ["aloe-base"] * 3, "persona_id": "x"}, 400, "models"),
    ({"models": ["aloe-base"]}, 400, "exactly one of persona_id"),
    ({"models": ["aloe-base"], "persona_id": "pers-none"}, 404, "no benchmark persona 'pers-none'"),
    ({"models": ["aloe-base"], "persona": {"profile": "", "personality": "shy"}}, 400, "profile"),
    ({"models": ["aloe-base"], "persona_id": "x", "mode": "robot"}, 400, "mode"),
    ({"models": ["aloe-base"], "persona_id": "x", "turns": 99}, 400, "max_turns of 6"),
    ({"models": ["aloe-base"], "persona_id": "x", "max_tokens": 999}, 400, "limit of 64"),
    ({"models": ["aloe-base"], "persona_id": "x", "colour": "red"}, 400, "colour"),
])
def test_bad_session_requests_get_openai_style_4xx(app, body, status, fragment):
    if body.get("persona_id") == "x" and status != 404:
        body = {**body, "persona_id": first_persona(app)}
    r = call(app, "POST", "/interactive/sessions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert fragment in err["message"] and err["type"]


def test_bad_turn_requests(app):
    sim = create(app, persona_id=first_persona(app), mode="simulated", turns=1)
    human = create(app, persona={"profile": "A 40-year-old baker.", "personality": "Cheerful."}, mode="human")
    sid, hid = sim["session_id"], human["session_id"]
    for path, body, status, fragment in [
        (f"/interactive/sessions/{sid}/turns", {"message": "hi"}, 400, "come from the simulator"),
        (f"/interactive/sessions/{hid}/turns", {"message": " "}, 400, "non-empty"),
        (f"/interactive/sessions/{hid}/turns", {"message": "x" * 5000}, 400, "over 4000 characters"),
        (f"/interactive/sessions/{hid}/run", None, 400, "needs a simulated session"),
        (f"/interactive/sessions/{hid}/preferences", {"turn": 1, "preferred": "A"}, 400, "side-by-side"),
        ("/interactive/sessions/sess-missing/turns", {}, 404, "no session 'sess-missing'"),
    ]:
        r = call(app, "POST", path, body)
        assert r.status_code == status and fragment in r.json()["error"]["message"], (path, r.text)


def test_simulated_session_turn_by_turn_then_streamed_then_compare(app, tmp_path):
    s = create(app, persona_id=first_persona(app), mode="simulated", turns=3, seed=5)
    assert s["models"] == {"A": "aloe-base"} and s["turns"] == []
    t1 = ok(call(app, "POST", f"/interactive/sessions/{s['session_id']}/turns", {}))
    reply = t1["replies"]["A"]
    assert t1["turn"] == 1 and t1["user_message"] and reply["reply"] and 1 <= reply["score"] <= 5
    assert len(reply["score_probs"]) == 5 and t1["levels"]["A"]["AL"] == [reply["score"]]
    lines = []
    with httpx.stream("POST", f"{app['url']}/interactive/sessions/{s['session_id']}/run", headers=AUTH, timeout=300) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert [e["event"] for e in lines] == ["turn", "turn", "done"] and [e["turn"] for e in lines[:2]] == [2, 3]
    assert len(lines[-1]["session"]["levels"]["A"]["AL"]) == 3
    done = ok(call(app, "POST", f"/interactive/sessions/{s['session_id']}/finish"))
    assert done["ended"] == "finished" and done["written"]["evals"]["A"]
    # the session is an evaluation: the eval job's turns schema, and compare reads it
    import pyarrow.parquet as pq

    turns = pq.read_table(Path(done["written"]["evals"]["A"]) / "turns")
    assert turns.schema.names == EVAL_TURNS.names and turns["turn"].to_pylist() == [1, 2, 3]
    cmd = [sys.executable, "jobs/eval_aloe.py", "compare", str(app["out"] / "interactive"), "--output", str(tmp_path / "cmp")]
    done_cmd = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done_cmd.returncode == 0, done_cmd.stderr
    assert s["session_id"] in (tmp_path / "cmp" / "compare.md").read_text()


def test_a_role_engine_of_its_own_is_a_deployment_of_the_app(app):
    """The judge's engine is not the served model: the app hosts it as an engine deployment of its
    own (not a model loaded inside the weightless ingress), and the judge's calls went there."""
    from ray import serve

    s = create(app, persona_id=first_persona(app), mode="simulated", turns=1, seed=9)
    t1 = ok(call(app, "POST", f"/interactive/sessions/{s['session_id']}/turns", {}))
    assert 1 <= t1["replies"]["A"]["score"] <= 5
    deployments = serve.status().applications["aloe-interactive"].deployments
    assert {"EngineServer", "EngineServer.judging", "ChatServer"} <= set(deployments)
    stats = serve.get_deployment_handle("EngineServer.judging", "aloe-interactive").stats.remote().result()
    assert stats["served_requests"] >= 1 and stats["pid"] != os.getpid()
    base = serve.get_deployment_handle("EngineServer", "aloe-interactive").stats.remote().result()
    assert base["pid"] != stats["pid"]


def test_human_session_with_a_free_text_persona(app):
    s = create(app, persona={"profile": "A retired sailor in Hull.", "personality": "Gruff, short answers."},
               mode="human", turns=2)
    t = ok(call(app, "POST", f"/interactive/sessions/{s['session_id']}/turns", {"message": "Any tips for knots?"}))
    assert t["user_message"] == "Any tips for knots?" and t["replies"]["A"]["reply"]
    done = ok(call(app, "POST", f"/interactive/sessions/{s['session_id']}/finish"))
    import pyarrow.parquet as pq

    row = pq.read_table(Path(done["written"]["evals"]["A"]) / "turns").to_pylist()[0]
    assert row["simulator_model"] == "human" and row["profile"] == "A retired sailor in Hull."
    assert call(app, "POST", f"/interactive/sessions/{s['session_id']}/turns", {"message": "more"}).status_code == 400


def test_side_by_side_blind_preferences_train_dpo_loader(app):
    from aloe_ray.config.train import TrainDPOConfig
    from aloe_ray.pipeline.train import training_rows

    s = create(app, models=["aloe-base", "aloe-lora"], persona_id=first_persona(app), mode="human", turns=2)
    assert s["side_by_side"] and s["models"] is None and s["labels"] == ["A", "B"]
    sid = s["session_id"]
    for msg in ("I am training for a marathon.", "What should I eat the night before?"):
        t = ok(call(app, "POST", f"/interactive/sessions/{sid}/turns", {"message": msg}))
        assert set(t["replies"]) == {"A", "B"} and all(1 <= r["score"] <= 5 for r in t["replies"].values())
    assert ok(call(app, "GET", f"/interactive/sessions/{sid}"))["models"] is None  # still blind
    ok(call(app, "POST", f"/interactive/sessions/{sid}/preferences", {"turn": 1, "preferred": "B"}))
    prefs = ok(call(app, "POST", f"/interactive/sessions/{sid}/preferences", {"turn": 2, "preferred": "A"}))
    assert prefs["preferences"] == {"1": "B", "2": "A"}
    bad = call(app, "POST", f"/interactive/sessions/{sid}/preferences", {"turn": 3, "preferred": "A"})
    assert bad.status_code == 400 and "not been played" in bad.json()["error"]["message"]
    done = ok(call(app, "POST", f"/interactive/sessions/{sid}/finish"))
    assert sorted(done["models"].values()) == ["aloe-base", "aloe-lora"]
    cfg = TrainDPOConfig.model_validate({"data": {"table": str(app["out"] / "interactive" / "dpo")}})
    rows = [r for r in training_rows(cfg, "dpo", S3Options()).to_pylist() if r["tree_id"] == sid]
    assert [r["turn"] for r in sorted(rows, key=lambda r: r["turn"])] == [1, 2]
    assert {r["source"] for r in rows} == {"human"}
    by_turn = {r["turn"]: r for r in rows}
    assert by_turn[1]["chosen"][0]["content"] == done["turns"][0]["replies"]["B"]["reply"]
    assert by_turn[2]["prompt"][-1] == {"role": "user", "content": "What should I eat the night before?"}


def test_a_long_session_blocks_neither_other_sessions_nor_itself_twice(app):
    persona = first_persona(app)
    slow = create(app, persona_id=persona, mode="simulated", turns=4)
    other = create(app, persona_id=persona, mode="simulated", turns=1)
    events, started = [], threading.Event()

    def stream():
        with httpx.stream("POST", f"{app['url']}/interactive/sessions/{slow['session_id']}/run", headers=AUTH,
                          timeout=300) as r:
            for line in r.iter_lines():
                if line:
                    events.append(json.loads(line)["event"])
                    started.set()

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(300)
    busy = call(app, "POST", f"/interactive/sessions/{slow['session_id']}/turns", {})
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "session_busy"
    ok(call(app, "POST", f"/interactive/sessions/{other['session_id']}/turns", {}))
    assert "done" not in events  # the other session's turn finished while the long one was still going
    t.join(300)
    assert events == ["turn"] * 4 + ["done"]


def test_tree_view_lists_and_opens_a_tree_with_unknown_columns(app):
    out = ok(call(app, "GET", "/interactive/trees"))
    assert len(out["trees"]) == 2 and all(t["status"] == "ok" and t["persona_id"] for t in out["trees"])
    tree = ok(call(app, "GET", f"/interactive/trees/{out['trees'][0]['tree_id']}"))
    assert tree["extra_columns"] == ["quality_note"]
    users = [n for n in tree["nodes"] if n["role"] == "user"]
    assert [u["turn"] for u in users] == [1, 2] and all(len(u["judge_probs"]) == 2 for u in users)
    assert {n["tree_id"] for n in tree["nodes"]} == {out["trees"][0]["tree_id"]}
    missing = call(app, "GET", "/interactive/trees/tree-nope")
    assert missing.status_code == 404 and "no tree 'tree-nope'" in missing.json()["error"]["message"]


def artifacts() -> Path:
    path = Path(os.environ.get("ALOE_ARTIFACTS") or REPO / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_page_in_a_real_browser(app):
    """Chromium opens the page, is asked for the key, runs a simulated side-by-side session,
    waits for two judged turns, marks a preference, reveals, and opens a tree; screenshots kept."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import expect, sync_playwright

    shots = artifacts()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(app["url"] + "/")
        expect(page.locator("#keyform")).to_be_visible()  # 401: the page asks for the key
        page.fill("#apikey", KEY)
        page.click("#savekey")
        expect(page.locator("#modelA option")).to_have_count(2)
        page.select_option("#modelB", "aloe-lora")
        page.select_option("#mode", "simulated")
        docs = bool(os.environ.get("ALOE_DOCS_IMG"))  # the README's screenshot: longer replies, 3 turns
        page.fill("#turns", "3" if docs else "2")
        page.fill("#maxTokens", "40" if docs else "8")
        page.fill("#seed", "3")
        page.click("#start")
        expect(page.locator("#session")).to_be_visible()
        page.click("#runAll")
        turns = 3 if docs else 2
        expect(page.locator(".turn")).to_have_count(turns, timeout=300_000)
        expect(page.locator("#status")).to_have_text("all turns played", timeout=300_000)
        expect(page.locator(".turn .score")).to_have_count(2 * turns)
        assert all(s.startswith("score ") for s in page.locator(".turn .score").all_inner_texts())
        expect(page.locator("#chart circle.al-point")).to_have_count(2 * turns)
        expect(page.locator("#chart polyline.al-line")).to_have_count(2)
        expect(page.locator("#sim-controls")).to_be_hidden()  # every planned turn is played
        expect(page.locator("#human-controls")).to_be_hidden()
        page.click('.turn[data-turn="1"] button.prefer[data-label="B"]')
        expect(page.locator('.turn[data-turn="1"] .bubble.preferred[data-label="B"]')).to_be_visible()
        page.screenshot(path=str(shots / "interactive.png"), full_page=True)
        page.click("#finish")
        expect(page.locator("#reveal")).to_contain_text("aloe-lora", timeout=120_000)
        expect(page.locator("#reveal")).to_contain_text("aloe-base")
        page.screenshot(path=str(shots / "interactive-revealed.png"), full_page=True)
        with page.expect_download() as download:
            page.click("#download")
        saved = json.loads(Path(download.value.path()).read_text())
        assert saved["ended"] == "finished" and saved["preferences"] == {"1": "B"} and len(saved["turns"]) == turns
        page.click("#tab-trees")
        expect(page.locator(".tree-row")).to_have_count(2)
        page.locator(".tree-row").first.click()
        expect(page.locator(".tnode.user")).to_have_count(2)
        expect(page.locator(".badge.chosen")).to_have_count(2)
        expect(page.locator('.flag.extra[data-column="quality_note"]')).to_have_count(2)
        expect(page.locator(".judge-order")).to_have_count(2)  # a known quality column, shown as such
        page.screenshot(path=str(shots / "trees.png"), full_page=True)
        browser.close()
    if os.environ.get("ALOE_DOCS_IMG"):  # refresh the README's screenshots
        (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
        for name in ("interactive.png", "trees.png"):
            shutil.copy(shots / name, REPO / "docs" / "img" / name)
    assert (shots / "interactive.png").stat().st_size > 10_000


def test_stopping_the_app_writes_live_sessions(app):
    """Last in the module: it deletes the shared app. A replica that stops writes its live sessions."""
    from ray import serve

    s = create(app, persona={"profile": "A beekeeper in Kent.", "personality": "Talkative."}, mode="human", turns=2)
    ok(call(app, "POST", f"/interactive/sessions/{s['session_id']}/turns", {"message": "My bees swarmed today."}))
    serve.delete("aloe-interactive")
    saved = json.loads((app["out"] / "interactive" / "sessions" / f"{s['session_id']}.json").read_text())
    assert saved["ended"] == "server_stopped" and len(saved["turns"]) == 1
