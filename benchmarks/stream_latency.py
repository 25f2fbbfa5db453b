"""Time to first token of a streamed reply against the whole reply's time, through the Serve app.

A 128-token streamed reply (greedy, the openai client, loopback): the first content chunk's time
and the last chunk's, per run, and their ratio. Target: first token <= 25% of the full reply.

    PYTHONPATH=$PWD python benchmarks/stream_latency.py [--runs 3] [--max-tokens 128] [--url URL]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm, in many paragraphs."


def measure(url: str, model: str, args) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key=os.environ.get("ALOE_API_KEY", "none"), max_retries=0, timeout=300)
    ask = dict(model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=args.max_tokens,
               temperature=0.0, seed=0)
    client.chat.completions.create(**{**ask, "max_tokens": 8})  # warm-up
    print(f"\nstream latency: {args.max_tokens}-token streamed reply, greedy, {url}")
    print("run  first token s  full reply s  first/full  tokens  content chunks")
    for run in range(args.runs):
        started = time.monotonic()
        first = None
        chunks, tokens = 0, 0
        for ch in client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}):
            if ch.choices and ch.choices[0].delta.content:
                first = first or time.monotonic() - started
                chunks += 1
            if ch.usage:
                tokens = ch.usage.completion_tokens
        full = time.monotonic() - started
        print(f"{run + 1:>3}  {first:>13.2f}  {full:>12.2f}  {first / full:>10.0%}  {tokens:>6}  {chunks:>14}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--url", help="an already running server (default: start one on loopback)")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    if args.url:
        measure(args.url, args.model, args)
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from local_serve import local_serve

    with local_serve({"model": args.model}) as url:
        measure(url, args.model, args)


if __name__ == "__main__":
    main()
