"""Loud failure: an engine that does not answer stops the job with exit 2 before any tree grows;
failed trees fail the job (exit 1) unless --max_failed_share allows them; a batch that kills its
grower is tried a bounded number of times, then its trees are recorded as failed and the run ends."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import subprocess
import sys
import threading

import pyarrow.compute as pc
import pytest

from aloe_ray.config import EngineConfig
from aloe_ray.engines.probe import endpoint_problem
from aloe_ray.pipeline.run_output import RunOutput
from conftest import REPO, free_port, server_process, start_local_ray
from scripted_engine import ScriptedEngine

SMALL = ["--tree.max_turns=2", "--pipeline.progress_interval_s=2"]


def test_the_exit_rule_every_job_follows():
    from aloe_ray.pipeline.outcome import Outcome

    assert Outcome("tree", 4, 4).exit_code == 0
    assert Outcome("tree", 4, 3).exit_code == 1  # one failed tree fails the job by default
    assert Outcome("tree", 4, 3, max_failed_share=0.25).exit_code == 0
    assert Outcome("tree", 4, 2, max_failed_share=0.25).exit_code == 1
    assert Outcome("tree", 4, 0, max_failed_share=1).exit_code == 0
    assert Outcome("generation request", 0, 0).exit_code == 0  # nothing asked: nothing failed
    assert Outcome("tree", 4, 9).not_ok == 0  # more ok than requested (an earlier, larger run)
    line = Outcome("rollout", 10, 7, 0.2).line()
    assert line.startswith("[aloe-ray] exit 1: 3 of 10 requested rollouts not ok (30.0%, --max_failed_share=0.2); "
                           "exit code 0 only when every requested rollout is ok")


def _roles_on(engines: dict[str, list[str]]) -> list[str]:
    """Flags putting each engine's roles on it (an openai engine named after its port)."""
    return [f"--roles.{role}.engine={name}" for name, roles in engines.items() for role in roles]


def test_an_unreachable_endpoint_fails_the_job_with_exit_2_before_any_tree_grows(tmp_path):
    ports = {"api_a": free_port(), "api_b": free_port()}  # bound once, closed: nothing listens
    flags = [f for name, port in ports.items() for f in (
        f"--engines.{name}.backend=openai", f"--engines.{name}.model=m",
        f"--engines.{name}.base_url=http://127.0.0.1:{port}/v1")]
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "generate_trees.py"), *SMALL, f"--output={tmp_path}",
                           "--run_id=down", *flags,
                           *_roles_on({"api_a": ["simulator", "inducer"], "api_b": ["responder", "judge"]})],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    err = proc.stderr
    assert "an endpoint the job needs does not answer" in err
    for name, roles in (("api_a", "simulator, inducer"), ("api_b", "responder, judge")):
        assert f"engine '{name}' (openai model 'm' at http://127.0.0.1:{ports[name]}/v1; roles {roles}): " \
               "cannot connect (ConnectError" in err, err
    assert "starting engines" not in proc.stdout and "Started a local Ray instance" not in proc.stdout + err
    assert not (tmp_path / "down" / "trees").exists() and not (tmp_path / "down" / "nodes").exists()


@pytest.mark.parametrize("job, roles", [("generate_personas", ["generator"]), ("eval_aloe", ["simulator", "model",
                                                                                          "judge"])])
def test_the_persona_and_eval_jobs_check_their_endpoints_too(tmp_path, job, roles):
    url = f"http://127.0.0.1:{free_port()}/v1"
    flags = ["--engines.api.backend=openai", "--engines.api.model=m", f"--engines.api.base_url={url}",
             *(f"--{'generator' if r == 'generator' else 'roles.' + r}.engine=api" for r in roles)]
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / f"{job}.py"), f"--output={tmp_path}", "--run_id=down",
                           *flags], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert f"engine 'api' (openai model 'm' at {url}; role{'s' if len(roles) > 1 else ''} {', '.join(roles)}): " \
           "cannot connect" in proc.stderr, proc.stderr[-3000:]
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


class _Stub(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server that refuses: 401 for every call, or a model list without ours
    and 404 for its chat completions."""

    mode = "401"

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.mode == "401":
            self._answer(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
        else:
            self._answer(200, {"object": "list", "data": [{"id": "other", "object": "model", "created": 0,
                                                           "owned_by": "stub"}]})

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.mode == "401":
            return self.do_GET()
        self._answer(404, {"error": {"message": "The model `m` does not exist.", "type": "NotFoundError"}})

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("mode, expected", [
    ("401", "refuses the API key from $STUB_KEY: HTTP 401"),
    ("404", "answers 404 to a chat completion of model 'm'"),
])
def test_the_probe_says_why_an_endpoint_cannot_serve(monkeypatch, mode, expected):
    handler = type("Stub", (_Stub,), {"mode": mode})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("STUB_KEY", "wrong")
    try:
        why = endpoint_problem(EngineConfig(backend="openai", model="m", api_key_env="STUB_KEY", max_retries=0,
                                            base_url=f"http://127.0.0.1:{server.server_address[1]}/v1"))
    finally:
        server.shutdown()
    assert why is not None and expected in why, why
    if mode == "404":
        assert "its models: other" in why


def test_the_probe_passes_an_endpoint_that_answers():
    port = free_port()
    with server_process([sys.executable, str(REPO / "benchmarks" / "loopback_endpoint.py"), "--port", str(port)], port):
        url = f"http://127.0.0.1:{port}/v1"
        assert endpoint_problem(EngineConfig(backend="openai", model="loopback", base_url=url)) is None
        # not in its model list, but it serves the chat completion: an alias, not an error
        assert endpoint_problem(EngineConfig(backend="openai", model="alias", base_url=url)) is None


# --- real Ray runs: the job in this process, its engine a scripted one shipped to the growers ---

class _DiesOn(ScriptedEngine):
    """Kills the process it runs in (a grower) when asked about the persona whose profile holds
    `marker`, once `others` trees parts are committed under `trees_dir` (so only its own batch
    dies, on every try); each death adds a line to `deaths`."""

    def __init__(self, marker: str, trees_dir: str, others: int, deaths: str) -> None:
        super().__init__()
        self.marker, self.trees_dir, self.others, self.deaths = marker, trees_dir, others, deaths

    async def chat(self, requests, affinity=None):
        if self.marker in requests[0].messages[0]["content"]:
            for _ in range(600):
                if os.path.isdir(self.trees_dir) and \
                        sum(n.startswith("part-") for n in os.listdir(self.trees_dir)) >= self.others:
                    break
                await asyncio.sleep(0.1)
            with open(self.deaths, "a") as f:
                f.write("died\n")
            os._exit(1)
        return await super().chat(requests, affinity)


@pytest.fixture(scope="module")
def ray_here():
    import ray
    import ray.cloudpickle

    import scripted_engine

    # The scripted engines live in tests/, which the growers cannot import: ship them by value.
    ray.cloudpickle.register_pickle_by_value(scripted_engine)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    start_local_ray("aloe-failure-test")
    yield
    ray.shutdown()


@pytest.fixture()
def scripted_engines(monkeypatch):
    """Make the job's engines `engine` (set by the test) instead of starting Serve apps."""
    from aloe_ray.engines import deployment

    chosen = {}

    def start(engines, **_):
        return deployment.Engines({name: chosen["engine"] for name in engines}, started=[])

    monkeypatch.setattr(deployment, "start_engines", start)
    return chosen


def _job():
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_trees_job", REPO / "jobs" / "generate_trees.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _personas(tmp_path, profiles: list[str]) -> list[str]:
    (tmp_path / "profiles.jsonl").write_text("".join(json.dumps(p) + "\n" for p in profiles))
    (tmp_path / "personalities.jsonl").write_text(json.dumps("curious and chatty") + "\n")
    return [f"--personas.profiles={tmp_path / 'profiles.jsonl'}",
            f"--personas.personalities={tmp_path / 'personalities.jsonl'}", "--personas.personalities_per_profile=1"]


def test_failed_trees_fail_the_job_unless_max_failed_share_allows_them(ray_here, scripted_engines, tmp_path,
                                                                       capsys):
    scripted_engines["engine"] = ScriptedEngine(overrides={"simulator": lambda req, n: "*stares*"})
    args = [*SMALL, f"--output={tmp_path}", "--run_id=mute", "--num_trees=2",
            *_personas(tmp_path, ["likes tea", "likes maps"])]
    job = _job()
    assert job.main(args) == 1
    out = capsys.readouterr().out
    assert "0 ok, 2 failed trees" in out
    assert "[aloe-ray] quality: no judged turns" in out and "judge chose ;" not in out
    assert "[aloe-ray] exit 1: 2 of 2 requested trees not ok (100.0%, --max_failed_share=0); exit code 0 only " \
           "when every requested tree is ok" in out

    assert job.main([*args, "--max_failed_share=1"]) == 0  # the rerun grows them again; they fail again
    assert "[aloe-ray] exit 0: 2 of 2 requested trees not ok (100.0%, --max_failed_share=1)" in capsys.readouterr().out


def test_a_batch_that_kills_its_grower_is_retried_then_its_trees_fail_and_the_run_ends(ray_here, scripted_engines,
                                                                                      tmp_path, capsys):
    trees_dir = tmp_path / "killer" / "trees"
    deaths = tmp_path / "deaths"
    scripted_engines["engine"] = _DiesOn("doomed", str(trees_dir), others=2, deaths=str(deaths))
    args = [*SMALL, f"--output={tmp_path}", "--run_id=killer", "--num_trees=3", "--pipeline.trees_per_part=1",
            "--pipeline.trees_in_flight=2", "--pipeline.grower_actors=1", "--pipeline.batch_retries=1",
            *_personas(tmp_path, ["likes tea", "a doomed sailor", "likes maps"])]
    assert _job().main(args) == 1  # and it returned: no endless retry
    assert deaths.read_text().count("died") == 2  # the first try and batch_retries=1 more
    out = capsys.readouterr().out
    assert "2 ok, 1 failed trees" in out, out[-3000:]
    trees = RunOutput(str(tmp_path), "killer").read("trees")
    assert trees.num_rows == 3 and len(set(trees["tree_id"].to_pylist())) == 3
    [failed] = trees.filter(pc.equal(trees["status"], "failed")).to_pylist()
    assert "doomed" in failed["profile"] and failed["num_nodes"] == 0
    reason = failed["failure_reason"]
    assert "its batch never came back: Ray Data gave up on it" in reason and "tried again 1 time(s)" in reason
    assert "Actor" in reason, reason  # Ray's own account of the death (ActorDiedError / RayActorError)
    assert "WARNING: 1 tree(s) recorded as failed" in out
    assert "[aloe-ray] exit 1: 1 of 3 requested trees not ok" in out
