"""Soak test of the Serve app: N concurrent multi-turn chats on loopback for T minutes.

Each chat keeps talking (system prompt + its last 6 messages, max_tokens 24) until the time is
up. Every minute prints throughput, p50/p99 latency and the replica's RSS (which the replica
reports on /health), next to the second minute's (the baseline after warm-up). Target: the last
minute's throughput >= 90% of the second's, p50 within 1.2x, RSS flat after warm-up. Bounded:
each request times out after --request-timeout-s, no request starts after T minutes, and the run
is abandoned 5 minutes after that.

    PYTHONPATH=$PWD python benchmarks/serve_soak.py [--chats 24] [--minutes 10] [--url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

TOPICS = ["my garden", "a trip to Lisbon", "learning the violin", "my new job", "cooking for friends",
          "training for a 10k", "my grandmother's stories", "fixing my bike", "a book I'm reading",
          "moving to a new city", "my cat's habits", "saving money"]


async def chat(client, model: str, i: int, end: float, args, done: list) -> None:
    system = {"role": "system", "content": "You are a friendly assistant. Answer briefly."}
    history: list[dict] = []
    turn = 0
    while time.monotonic() < end:
        turn += 1
        history.append({"role": "user", "content": f"Turn {turn}: tell me something about "
                                                   f"{TOPICS[(i + turn) % len(TOPICS)]}."})
        history = history[-args.history:]
        if history[0]["role"] == "assistant":
            history = history[1:]
        started = time.monotonic()
        try:
            resp = await client.chat.completions.create(model=model, messages=[system, *history],
                                                        max_tokens=args.max_tokens, seed=i * 1000 + turn)
        except Exception as exc:  # counted, never hidden
            done.append((time.monotonic(), time.monotonic() - started, 0, f"{type(exc).__name__}: {exc}"))
            history.pop()
            continue
        done.append((time.monotonic(), time.monotonic() - started, resp.usage.completion_tokens, None))
        history.append({"role": "assistant", "content": resp.choices[0].message.content or "..."})


async def sample_rss(http, url: str, end: float, rss: list) -> None:
    while time.monotonic() < end:
        try:
            health = (await http.get(f"{url}/health", timeout=30)).json()
            rss.append((time.monotonic(), health["replica"]["rss_bytes"] / 2**20))
        except Exception:
            pass
        await asyncio.sleep(10)


def minute_rows(done, rss, t0: float, minutes: int) -> list[dict]:
    rows = []
    for m in range(minutes):
        lo, hi = t0 + 60 * m, t0 + 60 * (m + 1)
        ok = [(lat, tok) for t, lat, tok, err in done if lo <= t < hi and err is None]
        lats = sorted(lat for lat, _ in ok)
        q = statistics.quantiles(lats, n=100) if len(lats) > 1 else lats * 99
        mem = [mb for t, mb in rss if lo <= t < hi]
        rows.append({"minute": m + 1, "ok": len(ok), "failed": sum(1 for t, *_, e in done if lo <= t < hi and e),
                     "rps": len(ok) / 60, "tok_s": sum(tok for _, tok in ok) / 60,
                     "p50": q[49] if q else float("nan"), "p99": q[98] if q else float("nan"),
                     "rss": mem[-1] if mem else float("nan")})
    return rows


async def run(url: str, model: str, args) -> None:
    import httpx
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key=os.environ.get("ALOE_API_KEY", "none"), max_retries=0,
                         timeout=args.request_timeout_s)
    done: list = []
    rss: list = []
    t0 = time.monotonic()
    end = t0 + 60 * args.minutes
    async with httpx.AsyncClient() as http:
        jobs = [chat(client, model, i, end, args, done) for i in range(args.chats)]
        await asyncio.wait_for(asyncio.gather(sample_rss(http, url, end, rss), *jobs),
                               60 * args.minutes + 300)
    rows = minute_rows(done, rss, t0, args.minutes)
    base = rows[1] if len(rows) > 1 else rows[0]
    print(f"\nserve soak: {args.chats} concurrent chats, history {args.history} messages, max_tokens "
          f"{args.max_tokens}, {args.minutes} min, {url}")
    print("minute  ok  failed  req/s  tok/s  p50 s  p99 s  RSS MB | vs minute 2: req/s   p50")
    for r in rows:
        print(f"{r['minute']:>6} {r['ok']:>3} {r['failed']:>7} {r['rps']:>6.2f} {r['tok_s']:>6.1f} {r['p50']:>6.2f} "
              f"{r['p99']:>6.2f} {r['rss']:>7.0f} |             {r['rps'] / base['rps']:>5.0%} "
              f"{r['p50'] / base['p50']:>5.2f}x")
    last = rows[-1]
    print(f"last minute vs second: throughput {last['rps'] / base['rps']:.0%} (target >= 90%), "
          f"p50 {last['p50'] / base['p50']:.2f}x (target <= 1.2x), RSS {base['rss']:.0f} -> {last['rss']:.0f} MB")
    for *_, err in [d for d in done if d[3]][:5]:
        print("  failure:", err)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chats", type=int, default=24)
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--history", type=int, default=6, help="most messages of a chat's history sent")
    ap.add_argument("--request-timeout-s", type=float, default=300)
    ap.add_argument("--url", help="an already running server (default: start serving/config.yaml's app on loopback)")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    if args.url:
        asyncio.run(run(args.url, args.model, args))
        return
    import sys

    import yaml

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from local_serve import local_serve

    config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "serving", "config.yaml")
    app_args = {**yaml.safe_load(open(config))["applications"][0]["args"], "model": args.model,
                "min_replicas": 1, "max_replicas": 1}  # one replica: its RSS is the one /health reports
    print("app args:", app_args)
    with local_serve(app_args) as url:
        asyncio.run(run(url, args.model, args))


if __name__ == "__main__":
    main()
