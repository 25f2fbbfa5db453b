"""Fixtures of `benchmarks/chaos.py` (and `tests/test_chaos.py`), never shipped backends: a
loopback endpoint with added latency that counts what it serves, a fault-injecting proxy in
front of moto's S3 server, a `ray start --head` cluster of its own, and drivers of the tree job.

The endpoint and the proxy also run as their own processes (so they cost the benchmark's
process no GIL):

    python benchmarks/chaos_fixtures.py endpoint --port 8399 --latency-ms 150
    python benchmarks/chaos_fixtures.py s3-proxy --port 8400 --upstream http://127.0.0.1:5000

Both answer `GET /__chaos__/stats` (the proxy also `POST /__chaos__/faults?rate=0.1&kinds=503,500,reset`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

REPO = Path(__file__).resolve().parents[1]
CONTROL = "/__chaos__/"
GATED = "/gated/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def control(port: int, what: str, method: str = "POST") -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, CONTROL + what)
        return json.loads(conn.getresponse().read() or b"{}")
    finally:
        conn.close()


@contextlib.contextmanager
def fixture_process(kind: str, port: int, *args: str):
    """`python benchmarks/chaos_fixtures.py <kind> --port <port> ...`, up once the port answers."""
    proc = subprocess.Popen([sys.executable, __file__, kind, "--port", str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# The endpoint: the instant loopback stub (benchmarks/loopback_endpoint.py) behind a delay,
# counting requests by their seed. A request's seed derives from (tree, path, role, attempt)
# (aloe_ray/trees/grow.py), so a seed served twice is a call grown twice: the work a kill wasted.
# Requests under GATED (a driver's engines given base_url .../gated/v1) wait while the gate is
# shut (`POST /__chaos__/gate?open=0`): the benchmark holds one driver's growers and lets them go
# when it chooses.

def endpoint_app(latency_s: float):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from loopback_endpoint import app as instant

    seeds: Counter = Counter()
    gate = {"open": asyncio.Event(), "waiting": 0, "served": 0}
    gate["open"].set()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return await instant(scope, receive, send)
        if scope["path"].startswith(CONTROL):
            query = parse_qs(scope.get("query_string", b"").decode())
            if scope["path"].endswith("/reset"):
                seeds.clear()
            if scope["path"].endswith("/gate"):
                gate["open"].set() if query.get("open", ["1"])[0] == "1" else gate["open"].clear()
            data = json.dumps({"seeds": {str(k): v for k, v in seeds.items()}, "gate_open": gate["open"].is_set(),
                               "gated_waiting": gate["waiting"], "gated_served": gate["served"]}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"].endswith("/chat/completions"):
            seed = json.loads(body or b"{}").get("seed")
            seeds[seed] += 1
            if scope["path"].startswith(GATED):  # held while the gate is shut
                gate["waiting"] += 1
                try:
                    await gate["open"].wait()
                finally:
                    gate["waiting"] -= 1
                gate["served"] += 1
            await asyncio.sleep(latency_s * (0.5 + (hash(seed) % 1000) / 1000))  # spread, so commits do not bunch

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        await instant(scope, replay, send)

    return app


# The S3 proxy: forwards every request to moto and, at a given rate, answers a request under a
# run's nodes/, trees/ or lease instead with a fault: 503 SlowDown (throttling), 500
# InternalError, a reset connection before forwarding ('reset': the write never happened) or
# after it ('reset-after': it happened, the client does not know).

FAULT_KINDS = ("503", "500", "reset", "reset-after")
FAULT_PATHS = ("/nodes/", "/trees/", "lease.json")
ERRORS = {"503": ("SlowDown", "Please reduce your request rate."),
          "500": ("InternalError", "We encountered an internal error. Please try again.")}


class S3Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int] = ("127.0.0.1", 5000)
    state = {"rate": 0.0, "kinds": list(FAULT_KINDS), "faults": Counter(), "writes": Counter(), "requests": 0}
    lock = threading.Lock()
    rng = random.Random(0)

    def log_message(self, *args) -> None:
        pass

    def do_GET(self): self._handle()
    def do_PUT(self): self._handle()
    def do_POST(self): self._handle()
    def do_DELETE(self): self._handle()
    def do_HEAD(self): self._handle()

    def _handle(self) -> None:
        body = self._body()
        url = urlparse(self.path)
        if url.path.startswith(CONTROL):
            return self._control(url)
        with self.lock:
            self.state["requests"] += 1
            fault = None
            if any(p in url.path for p in FAULT_PATHS) and self.rng.random() < self.state["rate"]:
                fault = self.rng.choice(self.state["kinds"])
                self.state["faults"][fault] += 1
        if fault in ERRORS:
            code, message = ERRORS[fault]
            xml = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message>"
                   f"<RequestId>chaos</RequestId></Error>").encode()
            return self._reply(int(fault), [("Content-Type", "application/xml")], xml)
        if fault == "reset":
            return self._reset()
        status, reason, headers, data = self._forward(body)
        query = parse_qs(url.query)
        written = (self.command == "PUT" and "partNumber" not in query) or (self.command == "POST" and "uploadId" in query)
        if written and 200 <= status < 300:
            with self.lock:  # an object written, by the folder it is in (e.g. bucket/runs/r/nodes)
                self.state["writes"][url.path.lstrip("/").rsplit("/", 1)[0]] += 1
        if fault == "reset-after":
            return self._reset()
        self._reply(status, headers, data, reason)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self, body: bytes):
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "expect", "connection")}
            headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            keep = [(k, v) for k, v in resp.getheaders()
                    if k.lower() not in ("transfer-encoding", "connection", "date", "server")
                    and (k.lower() != "content-length" or self.command == "HEAD")]
            return resp.status, resp.reason, keep, data
        finally:
            conn.close()

    def _reply(self, status: int, headers, data: bytes, reason: str | None = None) -> None:
        self.send_response(status, reason)
        for k, v in headers:
            self.send_header(k, v)
        if self.command != "HEAD" or not any(k.lower() == "content-length" for k, _ in headers):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def _control(self, url) -> None:
        query = parse_qs(url.query)
        with self.lock:
            if url.path.endswith("/faults"):
                self.state["rate"] = float(query.get("rate", ["0"])[0])
                if "kinds" in query:
                    self.state["kinds"] = [k for k in query["kinds"][0].split(",") if k in FAULT_KINDS]
            data = json.dumps({**self.state, "faults": dict(self.state["faults"]),
                               "writes": dict(self.state["writes"])}).encode()
        self._reply(200, [("Content-Type", "application/json")], data)


# A `ray start --head` cluster of its own: every port chosen here and its own temp dir, so other
# clusters on this machine are never touched. `ray stop` would stop every Ray on the machine;
# this one is stopped by killing exactly the processes that run in its temp dir.

class RayHead:
    PORTS = ("port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
             "metrics-export-port")

    def __init__(self, num_cpus: int = 2) -> None:
        self.num_cpus = num_cpus
        self.ports = {name: free_port() for name in self.PORTS}
        self.temp_dir = tempfile.mkdtemp(prefix="chaos-", dir="/tmp")  # short: Ray's socket paths have a limit
        venv_bin = str(Path(sys.executable).parent)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{venv_bin}:{os.environ['PATH']}",
                    "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self.ray = f"{venv_bin}/ray"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports['port']}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.ports['ray-client-server-port']}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard-port']}"

    def start(self) -> RayHead:
        cmd = [self.ray, "start", "--head", f"--num-cpus={self.num_cpus}", "--node-ip-address=127.0.0.1",
               "--dashboard-host=127.0.0.1", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
               *(f"--{name}={port}" for name, port in self.ports.items())]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=240)
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        wait_for_port(self.ports["dashboard-port"], timeout=120)
        return self

    def processes(self):
        import psutil

        mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
        found = {}
        for p in psutil.process_iter(["cmdline"]):
            try:
                if p.pid not in mine and any(self.temp_dir in arg for arg in p.info["cmdline"] or ()):
                    found[p.pid] = p
                    found.update((c.pid, c) for c in p.children(recursive=True))
            except psutil.Error:
                continue
        return list(found.values())

    def stop(self) -> None:
        import psutil

        for _ in range(3):
            procs = self.processes()
            if not procs:
                break
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(procs, timeout=10)

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        import shutil

        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def growers(self, job_id: str | None = None) -> list[dict]:
        """Alive grower actors (Ray Data's map workers of TreeGrower), from Ray's state API."""
        os.environ["RAY_AUTH_MODE"] = "token"  # read once, when Ray first looks: set before any Ray call here
        from ray.util.state import list_actors

        actors = list_actors(address=self.dashboard, filters=[("state", "=", "ALIVE")], detail=True,
                             limit=1000, raise_on_missing_output=False)
        return [{"actor_id": a.actor_id, "pid": a.pid, "job_id": a.job_id, "class_name": a.class_name,
                 "repr_name": getattr(a, "repr_name", "")} for a in actors
                if "MapWorker" in (a.class_name or "") and (job_id is None or a.job_id == job_id)]


# Drivers: `python jobs/generate_trees.py ...` as a subprocess of its own, output to a log file.
# With a barrier (or a Ray Client address), the job's main is called from LAUNCH: the job is
# imported first, then waits on a FIFO (opened by the benchmark once every racer is ready), so
# racers call the job's main at the same instant.

LAUNCH = r"""
import os, sys
sys.path.insert(0, os.path.join(os.getcwd(), "jobs"))
import generate_trees
import aloe_ray.pipeline.generate, ray  # the heavy imports, before the barrier
from aloe_ray.config.base import RayConfig
try:
    RayConfig(address="ray://127.0.0.1:1").init_kwargs()
except ValueError:  # this library version cannot join through Ray Client: join as Ray itself would
    plain = RayConfig.init_kwargs
    RayConfig.init_kwargs = lambda self: ({"address": self.address, "namespace": self.namespace}
                                          if str(self.address).startswith("ray://") else plain(self))
    print("[chaos] RayConfig.init_kwargs rejects ray:// addresses; this driver joins through Ray Client anyway",
          flush=True)
fifo, args = sys.argv[1], sys.argv[2:]
if fifo:
    open(fifo + ".ready-" + str(os.getpid()), "w").close()
    os.close(os.open(fifo, os.O_RDONLY))  # blocks until the benchmark opens the FIFO for writing
sys.exit(generate_trees.main(args))
"""


class Driver:
    def __init__(self, args: list[str], env: dict, log: Path, *, barrier: Path | None = None) -> None:
        self.log = log
        self.started = time.monotonic()
        self.killed_at: float | None = None
        if barrier is None and not any(a.startswith("--ray.address=ray://") for a in args):
            cmd = [sys.executable, str(REPO / "jobs" / "generate_trees.py"), *args]
        else:
            cmd = [sys.executable, "-c", LAUNCH, str(barrier or ""), *args]
        with open(log, "w") as f:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL the driver alone (not its process group: what runs on the cluster is left to Ray)."""
        self.killed_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


def release(barrier: Path, racers: int, timeout: float = 120.0) -> None:
    """Wait until `racers` drivers wait on the barrier FIFO, then let them all go at once."""
    deadline = time.monotonic() + timeout
    while len(list(barrier.parent.glob(barrier.name + ".ready-*"))) < racers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only some drivers reached the barrier {barrier}")
        time.sleep(0.05)
    time.sleep(0.2)  # from the ready file to the blocking open
    os.close(os.open(barrier, os.O_WRONLY))


def make_barrier(folder: Path, name: str) -> Path:
    path = folder / name
    os.mkfifo(path)
    return path


# Commit attempts on a local run root: every file renamed into nodes/ (storage.write_bytes
# writes a temporary sibling, then renames it), counted with inotify.

IN_MOVED_TO = 0x00000080


class RenameCounter:
    def __init__(self, folder: Path) -> None:
        import ctypes

        folder.mkdir(parents=True, exist_ok=True)
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK)
        if self._fd < 0 or self._libc.inotify_add_watch(self._fd, str(folder).encode(), IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {folder}")
        self.names: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import select

        while not self._stop.is_set():
            if not select.select([self._fd], [], [], 0.2)[0]:
                continue
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            i = 0
            while i < len(data):
                _, _, _, length = struct.unpack_from("iIII", data, i)
                name = data[i + 16:i + 16 + length].rstrip(b"\0").decode()
                if not name.startswith("."):
                    self.names[name] += 1
                i += 16 + length

    def close(self) -> Counter:
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self._fd)
        return self.names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["endpoint", "s3-proxy"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=100.0,
                        help="endpoint: mean delay of a chat completion (0.5-1.5x, by its seed)")
    parser.add_argument("--upstream", default="http://127.0.0.1:5000", help="s3-proxy: the S3 server")
    args = parser.parse_args()
    if args.kind == "endpoint":
        import uvicorn

        uvicorn.run(endpoint_app(args.latency_ms / 1000), host="127.0.0.1", port=args.port, log_level="warning",
                    access_log=False)
        return
    up = urlparse(args.upstream)
    S3Proxy.upstream = (up.hostname, up.port or 80)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), S3Proxy)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
