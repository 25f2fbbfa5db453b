"""A job's exit code, on one rule for every job that makes many items (trees, persona requests,
rollouts): 0 only when every requested item is ok, or when the share that is not (failed, or
never made) is at most the job's stated `max_failed_share`; else 1. Exit 2 is bad input, or an
engine that does not answer, found before anything was made."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

RULE = ("exit code 0 only when every requested {what} is ok, or when at most max_failed_share of them are "
        "not (failed or never made); else 1. 2: bad input or an engine that does not answer, before anything runs")
"""The rule as the jobs state it in their last log line (`{what}`: 'tree', 'request', ...)."""


@dataclass(frozen=True)
class Outcome:
    what: str
    """What the job makes, singular: 'tree', 'generation request', 'rollout'."""
    requested: int
    ok: int
    max_failed_share: float = 0.0

    @property
    def not_ok(self) -> int:
        return max(self.requested - self.ok, 0)

    @property
    def failed_share(self) -> float:
        return self.not_ok / self.requested if self.requested else 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.not_ok == 0 or self.failed_share <= self.max_failed_share else EXIT_FAILED

    def line(self) -> str:
        """The job's last log line: the verdict, and the rule it follows."""
        verdict = (f"{self.not_ok} of {self.requested} requested {self.what}s not ok ({100 * self.failed_share:.1f}%, "
                   f"--max_failed_share={self.max_failed_share:g})")
        return f"[aloe-ray] exit {self.exit_code}: {verdict}; {RULE.format(what=self.what)}"
