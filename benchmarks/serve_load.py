"""Load test of the Serve app on loopback: concurrent multi-turn chats through the openai client.

Starts a local Ray + the Serve app on the bundled model (or targets --url), runs --chats
conversations of --turns turns concurrently, and reports throughput, p50/p99 latency and failures.
Bounded: each request times out, and the whole run stops after --deadline-s.

    python benchmarks/serve_load.py [--chats 32] [--turns 3] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time


async def conversation(client, model: str, i: int, turns: int, max_tokens: int, latencies: list, failures: list):
    messages = [{"role": "system", "content": "You are a helpful assistant. Be brief."}]
    tokens = 0
    for t in range(turns):
        messages.append({"role": "user", "content": f"User {i}, turn {t + 1}: tell me one thing about the number {i + t}."})
        started = time.monotonic()
        try:
            resp = await client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, seed=i * 100 + t)
        except Exception as exc:  # counted and reported, never hidden
            failures.append(f"chat {i} turn {t + 1}: {type(exc).__name__}: {exc}")
            return tokens
        latencies.append(time.monotonic() - started)
        tokens += resp.usage.completion_tokens
        messages.append({"role": "assistant", "content": resp.choices[0].message.content})
    return tokens


async def run(url: str, model: str, args) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key=os.environ.get("ALOE_API_KEY", "none"), max_retries=0, timeout=300)
    latencies: list[float] = []
    failures: list[str] = []
    started = time.monotonic()
    jobs = [conversation(client, model, i, args.turns, args.max_tokens, latencies, failures) for i in range(args.chats)]
    tokens = sum(await asyncio.wait_for(asyncio.gather(*jobs), args.deadline_s))
    wall = time.monotonic() - started
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    print(f"\nserve load: {args.chats} concurrent chats x {args.turns} turns, max_tokens {args.max_tokens}, {url}")
    print(f"requests ok {len(latencies)}, failed {len(failures)}; wall {wall:.1f}s")
    print(f"throughput: {len(latencies) / wall:.2f} req/s, {tokens / wall:.1f} generated tok/s")
    print(f"latency: p50 {q[49]:.2f}s, p99 {q[98]:.2f}s, max {max(latencies):.2f}s")
    for f in failures[:5]:
        print("  failure:", f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chats", type=int, default=32)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--deadline-s", type=float, default=1800)
    ap.add_argument("--url", help="an already running server (default: start one on loopback)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--torch-threads", type=int, help="the engine replica's torch threads (default: its CPUs)")
    args = ap.parse_args()
    if args.url:
        asyncio.run(run(args.url, args.model, args))
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from local_serve import local_serve

    app = {"model": args.model, "max_ongoing_requests": 128, "max_batch_size": 32, "torch_threads": args.torch_threads}
    with local_serve(app) as url:
        asyncio.run(run(url, args.model, args))

if __name__ == "__main__":
    main()
