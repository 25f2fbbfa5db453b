"""Request routing for engine deployments: one conversation, one replica.

A conversation's calls carry an affinity key (its tree or session id). `AffinityRouter` ranks
the replicas by rendezvous hashing on that key, so every call of a conversation goes to the same
replica and reuses the prefix cache there; when replicas come or go only the conversations of
those replicas move. Serve's own machinery still decides among the ranks: a preferred replica
that is full (max_ongoing_requests) or gone is skipped for the next rank, the least loaded of
the others. Calls without a key get Serve's default (power of two choices).

This router serves the hf deployment. vllm engines (ray.serve.llm's LLMServer) use
ray.serve.llm's own PrefixCacheAffinityRouter (engines/serve_llm.py), which matches prompt text
in a shared tree actor, one remote call per request; it cannot serve hf, since ray.serve.llm
does not import without vLLM, and for hf a job's calls already name their conversation, so
hashing the name gives the same affinity without that hop.
"""

from __future__ import annotations

import hashlib
import random

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica


def affinity_key(pending: PendingRequest | None) -> str | None:
    """The `affinity` of the EngineCall this request carries, if any."""
    if pending is None:
        return None
    for arg in [*pending.args, *pending.kwargs.values()]:
        key = getattr(arg, "affinity", None)
        if isinstance(key, str) and key:
            return key
    return None


def rendezvous_order(key: str, replica_ids: list[str]) -> list[str]:
    """Replica ids from most to least preferred for `key` (highest random weight first)."""
    def weight(rid: str) -> int:
        return int.from_bytes(hashlib.blake2b(f"{key}\x00{rid}".encode(), digest_size=8).digest(), "big")

    return sorted(replica_ids, key=weight, reverse=True)


class AffinityRouter(FIFOMixin, RequestRouter):
    """FIFOMixin as in Serve's default router: the base class hands a chosen replica only to the
    request with the same internal request id, and two calls made at once inside one Serve
    request (the interactive page's two sides) share that id: the second was never routed."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        key = affinity_key(pending_request)
        if key is None or len(candidate_replicas) <= 1:
            return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        first, *rest = rendezvous_order(key, list(by_id))
        return [[by_id[first]], [by_id[r] for r in rest]]
