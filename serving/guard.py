"""Bearer auth and request limits of the public API: one implementation for both Serve apps.

The CPU app (serving/app.py) calls `Guard`'s checks in its routes. The vLLM app
(serving/llm_app.py) runs the same checks as `GuardMiddleware`, an ASGI layer in front of
ray.serve.llm's OpenAI ingress: every route needs the key, bodies over max_body_bytes get 413,
max_tokens over max_tokens_limit gets 400 (a chat that names none gets default_max_tokens, as
on CPU), and a request past request_timeout_s gets 504 (an error event once its stream has
started) and is cancelled, which cancels its generation downstream.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from dataclasses import asdict, dataclass

from serving.openai_api import APIError


@dataclass(frozen=True)
class RequestLimits:
    api_key_env: str | None
    """Environment variable holding the bearer token (read where the app runs); None: no auth."""
    max_body_bytes: int
    max_tokens_limit: int
    default_max_tokens: int
    request_timeout_s: float

    @classmethod
    def of(cls, args) -> RequestLimits:
        """From ServeArgs."""
        return cls(args.api_key_env, args.max_body_bytes, args.max_tokens_limit, args.default_max_tokens,
                   args.request_timeout_s)

    def as_dict(self) -> dict:
        return asdict(self)


class Guard:
    """The checks, with the key read from this process's environment (refuses to start without it)."""

    def __init__(self, limits: RequestLimits) -> None:
        self.limits = limits
        self.api_key = None
        if limits.api_key_env:
            self.api_key = os.environ.get(limits.api_key_env)
            if not self.api_key:
                raise RuntimeError(f"api_key_env names {limits.api_key_env}, which is not set in the replica")

    def check_auth(self, authorization: str) -> None:
        if self.api_key is None:
            return
        if not hmac.compare_digest(authorization.encode(), f"Bearer {self.api_key}".encode()):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                           "authentication_error", code="invalid_api_key")

    def check_body_size(self, size: int | str | None) -> None:
        """`size`: bytes read so far, or a declared content-length header."""
        if isinstance(size, str):
            size = int(size) if size.isdigit() else None
        if size is not None and size > self.limits.max_body_bytes:
            raise APIError(413, f"request body over {self.limits.max_body_bytes} bytes", code="body_too_large")

    def check_max_tokens(self, asked: int | None) -> None:
        if asked is not None and asked > self.limits.max_tokens_limit:
            raise APIError(400, f"max_tokens {asked} exceeds this server's limit of {self.limits.max_tokens_limit}",
                           param="max_tokens")

    def timeout_error(self) -> APIError:
        return APIError(504, f"generation took longer than {self.limits.request_timeout_s}s", "timeout",
                        code="timeout")


GENERATING_ROUTES = ("/v1/chat/completions", "/v1/completions")


class GuardMiddleware:
    """ASGI middleware applying `Guard` to every HTTP request before the wrapped app sees it.
    Starlette builds it in the replica (add_middleware(GuardMiddleware, limits=...)), so the key is
    read from the replica's environment."""

    def __init__(self, app, limits: dict) -> None:
        self.app = app
        self.guard = Guard(RequestLimits(**limits))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            self.guard.check_auth(headers.get("authorization", ""))
            self.guard.check_body_size(headers.get("content-length"))
            body = await self._read_body(receive)
            if scope["path"].rstrip("/").endswith(GENERATING_ROUTES) and body:
                body = self._limit_tokens(body)
        except APIError as err:
            return await _send_error(send, err)
        scope = {**scope, "headers": [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
                 + [(b"content-length", str(len(body)).encode())]}
        await self._call_with_deadline(scope, _replay(body, receive), send)

    async def _read_body(self, receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise APIError(400, "client disconnected before sending the whole body")
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            self.guard.check_body_size(size)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _limit_tokens(self, body: bytes) -> bytes:
        """Refuse max_tokens over the limit; give a request that names none the default."""
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return body  # the app answers malformed JSON itself
        if not isinstance(data, dict):
            return body
        asked = data.get("max_completion_tokens") or data.get("max_tokens")
        if isinstance(asked, int):
            self.guard.check_max_tokens(asked)
            return body
        if asked is None:
            data["max_tokens"] = self.guard.limits.default_max_tokens
            return json.dumps(data).encode()
        return body

    async def _call_with_deadline(self, scope, receive, send) -> None:
        started = {"sse": None}  # set once the response has started: whether it streams events

        async def tracked_send(message) -> None:
            if message["type"] == "http.response.start":
                kinds = [v for k, v in message.get("headers", []) if k.lower() == b"content-type"]
                started["sse"] = any(b"text/event-stream" in v for v in kinds)
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracked_send), self.guard.limits.request_timeout_s)
        except TimeoutError:
            err = self.guard.timeout_error()
            if started["sse"] is None:
                await _send_error(send, err)
            else:  # headers are out: end the stream, with an error event when it is one
                tail = f"data: {json.dumps(err.body())}\n\n".encode() if started["sse"] else b""
                await send({"type": "http.response.body", "body": tail, "more_body": False})


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls: the client's disconnect

    return replay


async def _send_error(send, err: APIError) -> None:
    payload = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload, "more_body": False})
