"""An LRU of prompt KV caches for the hf engine, grouped by affinity key (a conversation).

A conversation's next prompt usually starts with its previous one (the history grows at the
end), so its prefill can resume from the longest cached common prefix instead of recomputing it.
The cache stores opaque per-layer (key, value) tensors; it never mutates them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

Layers = list[tuple[Any, Any]]  # per layer: key, value tensors [1, heads, seq, head_dim]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    def __init__(self, max_entries: int = 64, per_key: int = 8) -> None:
        self.max_entries, self.per_key = max_entries, per_key
        self._entries: OrderedDict[tuple[str, int], tuple[tuple[int, ...], Layers]] = OrderedDict()
        self._next = 0
        self.hits_tokens = 0
        self.lookups_tokens = 0

    def lookup(self, key: str | None, tokens: Sequence[int]) -> tuple[int, Layers | None]:
        """(n, layers cut to n tokens) for the longest cached prefix of `tokens`, leaving at least
        one token to compute (its logits start generation)."""
        self.lookups_tokens += len(tokens)
        if key is None or self.max_entries == 0:
            return 0, None
        best, best_id = 0, None
        for entry_id, (cached, _) in self._entries.items():
            if entry_id[0] == key:
                n = common_prefix(cached, tokens)
                if n > best:
                    best, best_id = n, entry_id
        best = min(best, len(tokens) - 1)
        if best_id is None or best <= 0:
            return 0, None
        self._entries.move_to_end(best_id)
        self.hits_tokens += best
        layers = self._entries[best_id][1]
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in layers]

    def store(self, key: str | None, tokens: Sequence[int], layers: Layers) -> None:
        if key is None or self.max_entries == 0:
            return
        tokens = tuple(tokens)
        same_key = [e for e in self._entries if e[0] == key]
        # a prompt that extends a cached one replaces it: that entry's prefix lives on in this one
        for entry_id in same_key:
            cached = self._entries[entry_id][0]
            if common_prefix(cached, tokens) == len(cached):
                del self._entries[entry_id]
                same_key.remove(entry_id)
                break
        if len(same_key) >= self.per_key:
            del self._entries[same_key[0]]
        self._entries[(key, self._next)] = (tokens, layers)
        self._next += 1
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
