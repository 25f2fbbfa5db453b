"""Start the Serve app on a free loopback port for a benchmark, and stop it afterwards."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def local_serve(app_args: dict) -> Iterator[str]:
    """A local Ray + the app built from `app_args`; yields its base URL."""
    import ray
    from ray import serve

    from serving.app import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(app_args), name="aloe", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
