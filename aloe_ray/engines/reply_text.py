"""A reply's text as its tokens arrive: stop strings and the part that is safe to stream. Pure.

The reply is `decode(tokens).strip()`, cut before the first stop string. Streamed deltas only
ever extend what was sent: text that might still change is held back (a suffix that could start
a stop string, trailing whitespace the final strip would remove, an incomplete UTF-8 character),
so the concatenated deltas equal the final text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

_INCOMPLETE = "\ufffd"  # what a byte-level tokenizer decodes half a UTF-8 character to


class ReplyText:
    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        self.decode, self.stop = decode, tuple(stop)
        self._longest_stop = max((len(s) for s in self.stop), default=0)
        self.raw = ""
        self.stopped = False
        self.sent = ""

    def update(self, tokens: list[int]) -> bool:
        """Re-read the reply from all its tokens; True once a stop string has appeared."""
        if self.stopped:
            return True
        previous = len(self.raw)
        self.raw = self.decode(tokens)
        if self.stop:
            start = max(0, previous - self._longest_stop)
            hits = [i for i in (self.raw.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.raw, self.stopped = self.raw[:min(hits)], True
        return self.stopped

    def text(self) -> str:
        """The reply as it ends now."""
        return self.raw.strip()

    def delta(self, final: bool = False) -> str:
        """Text not yet sent that can no longer change (all of the rest when `final`)."""
        safe = self.text() if final else self._settled()
        if not safe.startswith(self.sent) or len(safe) <= len(self.sent):
            return ""
        out, self.sent = safe[len(self.sent):], safe
        return out

    def _settled(self) -> str:
        text = self.raw.lstrip()
        cut = len(text.rstrip(_INCOMPLETE))
        if not self.stopped:
            for k in range(min(self._longest_stop - 1, cut), 0, -1):  # a stop string may be starting
                if any(s.startswith(text[cut - k:cut]) for s in self.stop):
                    cut -= k
                    break
        return text[:cut].rstrip()
