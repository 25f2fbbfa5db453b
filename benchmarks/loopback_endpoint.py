"""A loopback OpenAI-compatible endpoint that answers at once: a benchmark fixture, never a backend.

It takes the LLM's cost out of a scale measurement, so what is measured is the orchestration
(growers, commits, progress, the driver). Each tree role gets a reply in its format, decided by a
hash of the request, so runs are reproducible:

    python benchmarks/loopback_endpoint.py --port 8399     # then point every role at http://127.0.0.1:8399/v1

A plain ASGI app under uvicorn, no framework: the endpoint should cost far less CPU than the
pipeline it feeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math


def _reply(body: dict) -> tuple[str, list | None]:
    messages = body.get("messages") or []
    first = str(messages[0].get("content", "")) if messages else ""
    h = int.from_bytes(hashlib.blake2b(json.dumps(messages, sort_keys=True).encode() + str(body.get("seed")).encode(),
                                       digest_size=8).digest(), "big")
    if first.startswith("You are role-playing a human user"):
        return f"I just got back from a long walk and I keep thinking about {h % 9973}.", None
    if "extract what the" in first:
        return f"PROFILE: walks a lot; fact {h % 101}\nPERSONALITY: chatty; trait {h % 103}", None
    if first.startswith("You decide which assistant reply"):
        letter = "AB"[h % 2]
        p = 0.6 + (h % 35) / 100
        tops = [{"token": letter, "logprob": math.log(p), "bytes": None},
                {"token": "BA"["AB".index(letter)], "logprob": math.log(1 - p), "bytes": None}]
        return letter, [{"token": letter, "logprob": math.log(p), "bytes": None, "top_logprobs": tops}]
    return f"That sounds lovely; tell me more about it ({h % 10007}).", None


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"].endswith("/models"):
        payload = {"object": "list", "data": [{"id": "loopback", "object": "model", "owned_by": "bench", "created": 0}]}
    else:
        req = json.loads(body or b"{}")
        text, logprobs = _reply(req)
        payload = {
            "id": "chatcmpl-loopback", "object": "chat.completion", "created": 0, "model": req.get("model", "loopback"),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text},
                         "logprobs": {"content": logprobs} if logprobs else None}],
            "usage": {"prompt_tokens": 300, "completion_tokens": 20, "total_tokens": 320},
        }
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8399)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
