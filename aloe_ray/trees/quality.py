"""What a tree run produced, as figures a researcher can check: the data quality report. Pure.

Counts are additive (`QualityCounts.add` over parts of a `nodes` table, `merge` across parts),
so a report over any number of trees needs one part in memory at a time. `summary()` turns
them into rates; `warnings()` lists the figures that cross the documented thresholds below.

Figures: the inducer's parse rate; the share of replies cut at max_tokens per role; how often the
judge preferred a personalized candidate, overall, by turn, and by the display position it was
shown at; the share of verdicts per display position (a judge that always says 'A' shows here,
not in the labels: the order is shuffled); the judge's margin histogram; user messages that read
like an assistant's; empty and duplicate texts; the DPO pairs and SFT targets that survive the
training jobs' default filters.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from aloe_ray.train.datasets import DpoFilters, dpo_pairs, sft_examples, truncated

ROLES = ("simulator", "inducer", "responder", "judge")
MARGIN_BINS = 10

THRESHOLDS = {
    "position_share_max": 0.70,
    "cut_share_max": 0.30,
    "inducer_parse_rate_min": 0.50,
    "assistant_like_share_max": 0.10,
    "duplicate_candidates_share_max": 0.10,
    "dpo_survival_min": 0.50,  # of the candidate pairs
}
"""Where `warnings()` speaks up: a judge choosing one display position in more than 70% of turns
(position bias; meaningful from `MIN_JUDGED` turns on), more than 30% of a role's replies cut at
max_tokens (not counting the judge, whose answer is constrained), the inducer parsing under half
the time, over 10% of user messages reading like an assistant, over 10% of turns with identical
candidates, fewer than half of the candidate DPO pairs surviving the default filters."""

MIN_JUDGED = 10
"""Fewer judged turns than this say nothing about position bias: no warning is raised on them."""

ASSISTANT_LIKE = re.compile(
    r"\bhow (?:can|may) i (?:help|assist)|\bas an ai\b|\bi(?:'m| am) (?:here|happy|glad) to (?:help|assist)"
    r"|\bis there anything else\b|\bfeel free to (?:ask|reach out)|\bi(?:'d| would) be (?:happy|glad) to (?:help|assist)"
    r"|\blet me know if you (?:have|need)\b|\bi hope this helps\b|\bhere (?:are|is) (?:some|a few) (?:tips|suggestions|ways)\b"
    r"|\bwhat can i do for you\b",
    re.IGNORECASE,
)
"""A user message that reads like an assistant's (the simulator slipped out of its role): a small
set of assistant stock phrases ('how can I help', 'as an AI', 'is there anything else', 'feel free
to ask', 'I hope this helps', 'here are some tips'). Crude on purpose: a rate to watch, not a filter."""


def _norm(text: str | None) -> str:
    return " ".join((text or "").split()).casefold()


@dataclass
class QualityCounts:
    trees: int = 0
    user_messages: int = 0
    judged_turns: int = 0
    inducer_parsed: int = 0
    replies: Counter = field(default_factory=Counter)
    """Replies per role."""
    cut: Counter = field(default_factory=Counter)
    """Replies per role that ended at max_tokens (finish_reason 'length')."""
    personalized_chosen: int = 0
    by_turn: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    """turn -> [judged turns, personalized chosen]."""
    chosen_position: Counter = field(default_factory=Counter)
    """Display position the judge picked -> turns."""
    personalized_at: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    """Display position -> [turns with a personalized candidate there, turns it was the one chosen]."""
    margin_hist: list = field(default_factory=lambda: [0] * MARGIN_BINS)
    """Judge probability of the chosen candidate minus the best other one, in 10 bins over [0, 1]."""
    assistant_like: int = 0
    assistant_like_examples: list = field(default_factory=list)
    empty: Counter = field(default_factory=Counter)
    duplicate_candidates: int = 0
    """Judged turns with two candidates of the same text."""
    repeated_user_messages: int = 0
    """User messages that repeat an earlier one of the same tree."""
    dpo_pairs: int = 0
    dpo_dropped: Counter = field(default_factory=Counter)
    sft_examples: int = 0
    sft_targets: int = 0
    sft_dropped: Counter = field(default_factory=Counter)

    def add(self, nodes: list[dict]) -> QualityCounts:
        """Count one batch of whole trees (a part of the nodes table, as row dicts)."""
        by_tree: dict[str, list[dict]] = defaultdict(list)
        for n in nodes:
            by_tree[n["tree_id"]].append(n)
        self.trees += len(by_tree)
        for rows in by_tree.values():
            self._tree(rows)
        sft = sft_examples(nodes, dropped=self.sft_dropped)
        self.sft_examples += len(sft)
        self.sft_targets += sum(r["num_targets"] for r in sft)
        self.dpo_pairs += len(dpo_pairs(nodes, DpoFilters(), dropped=self.dpo_dropped))
        return self

    def _tree(self, rows: list[dict]) -> None:
        candidates: dict[str, list[dict]] = defaultdict(list)
        for n in rows:
            if n["role"] == "assistant":
                candidates[n["parent_id"]].append(n)
        seen_user: set[str] = set()
        for n in sorted(rows, key=lambda r: (r["turn"], r.get("path") or "")):
            role = "simulator" if n["role"] == "user" else "responder"
            self.replies[role] += 1
            self.cut[role] += truncated(n)
            self.empty[role] += not _norm(n["text"])
            if n["role"] != "user":
                continue
            self.user_messages += 1
            text = _norm(n["text"])
            if text in seen_user:
                self.repeated_user_messages += 1
            seen_user.add(text)
            if ASSISTANT_LIKE.search(n["text"] or ""):
                self.assistant_like += 1
                if len(self.assistant_like_examples) < 5:
                    self.assistant_like_examples.append((n["text"] or "")[:200])
            for role, column in (("inducer", "induced_finish_reason"), ("judge", "judge_finish_reason")):
                if n.get(column) is not None:
                    self.replies[role] += 1
                    self.cut[role] += n[column] == "length"
            self.inducer_parsed += bool(n.get("induced_ok"))
            self._verdict(n, sorted(candidates.get(n["node_id"], []), key=lambda c: c["candidate_index"]))

    def _verdict(self, user: dict, cands: list[dict]) -> None:
        chosen = user.get("judge_choice")
        if chosen is None or len(cands) < 2 or chosen >= len(cands):
            return
        self.judged_turns += 1
        personalized = bool(cands[chosen].get("personalized"))
        self.personalized_chosen += personalized
        turn = self.by_turn[int(user["turn"])]
        turn[0] += 1
        turn[1] += personalized
        order = list(user.get("judge_order") or range(len(cands)))
        self.chosen_position[order.index(chosen)] += 1
        for position, candidate in enumerate(order):
            if cands[candidate].get("personalized"):
                at = self.personalized_at[position]
                at[0] += 1
                at[1] += candidate == chosen
        texts = [_norm(c["text"]) for c in cands]
        self.duplicate_candidates += len(set(texts)) < len(texts)
        probs = user.get("judge_probs")
        if probs is not None and len(probs) == len(cands):
            margin = float(probs[chosen]) - max(float(p) for i, p in enumerate(probs) if i != chosen)
            self.margin_hist[min(int(max(margin, 0.0) * MARGIN_BINS), MARGIN_BINS - 1)] += 1

    def merge(self, other: QualityCounts) -> QualityCounts:
        for name in ("trees", "user_messages", "judged_turns", "inducer_parsed", "personalized_chosen",
                     "assistant_like", "duplicate_candidates", "repeated_user_messages", "dpo_pairs",
                     "sft_examples", "sft_targets"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("replies", "cut", "chosen_position", "empty", "dpo_dropped", "sft_dropped"):
            getattr(self, name).update(getattr(other, name))
        for name in ("by_turn", "personalized_at"):
            mine = getattr(self, name)
            for key, (a, b) in getattr(other, name).items():
                mine[key][0] += a
                mine[key][1] += b
        self.margin_hist = [a + b for a, b in zip(self.margin_hist, other.margin_hist)]
        self.assistant_like_examples = (self.assistant_like_examples + other.assistant_like_examples)[:5]
        return self

    def summary(self) -> dict:
        """The report's figures (rates in [0, 1]; None where nothing was counted)."""
        judged = self.judged_turns
        positions = sorted(set(self.chosen_position) | set(self.personalized_at))
        return {
            "trees": self.trees,
            "user_messages": self.user_messages,
            "judged_turns": judged,
            "inducer_parse_rate": _rate(self.inducer_parsed, self.user_messages),
            "replies": {r: self.replies[r] for r in ROLES},
            "cut": {r: self.cut[r] for r in ROLES},
            "cut_share": {r: _rate(self.cut[r], self.replies[r]) for r in ROLES},
            "personalized_chosen_rate": _rate(self.personalized_chosen, judged),
            "personalized_chosen_by_turn": {str(t): _rate(c, n) for t, (n, c) in sorted(self.by_turn.items())},
            "chosen_position_share": {_letter(p): _rate(self.chosen_position[p], judged) for p in positions},
            "personalized_chosen_by_position": {
                _letter(p): _rate(self.personalized_at[p][1], self.personalized_at[p][0]) for p in positions},
            "judge_margin_histogram": {"bins": [round(i / MARGIN_BINS, 2) for i in range(MARGIN_BINS + 1)],
                                       "counts": list(self.margin_hist)},
            "assistant_like_user_share": _rate(self.assistant_like, self.user_messages),
            "assistant_like_examples": list(self.assistant_like_examples),
            "empty_texts": {r: self.empty[r] for r in ("simulator", "responder")},
            "duplicate_candidates_share": _rate(self.duplicate_candidates, judged),
            "repeated_user_messages": self.repeated_user_messages,
            "dpo_pairs_default_filters": self.dpo_pairs,
            "dpo_dropped": dict(sorted(self.dpo_dropped.items())),
            "sft_examples_default_filters": self.sft_examples,
            "sft_targets_default_filters": self.sft_targets,
            "sft_dropped": dict(sorted(self.sft_dropped.items())),
            "thresholds": THRESHOLDS,
        }


def quality_counts(parts: Iterable[list[dict]]) -> QualityCounts:
    total = QualityCounts()
    for nodes in parts:
        total.merge(QualityCounts().add(nodes))
    return total


def warnings(summary: dict) -> list[str]:
    """One line per figure past its threshold (see THRESHOLDS)."""
    t, out = THRESHOLDS, []
    judged = summary["judged_turns"]
    if judged >= MIN_JUDGED:
        for letter, share in summary["chosen_position_share"].items():
            if share is not None and share > t["position_share_max"]:
                out.append(f"judge chose display position {letter} in {share:.0%} of {judged} turns "
                           f"(> {t['position_share_max']:.0%}): position bias (the order is shuffled, so labels "
                           "carry noise, not the bias)")
    for role, share in summary["cut_share"].items():
        # A judge's answer is constrained (a letter): its finish reason says nothing about room.
        if role != "judge" and share is not None and share > t["cut_share_max"]:
            out.append(f"{share:.0%} of {role} replies were cut at max_tokens (> {t['cut_share_max']:.0%}): "
                       f"raise roles.{role}.sampling.max_tokens (in a new run_id: it is a pinned setting)")
    rate = summary["inducer_parse_rate"]
    if rate is not None and rate < t["inducer_parse_rate_min"]:
        out.append(f"the inducer's reply parsed in {rate:.0%} of turns (< {t['inducer_parse_rate_min']:.0%}): "
                   "personalized candidates got no persona hint")
    share = summary["assistant_like_user_share"]
    if share is not None and share > t["assistant_like_share_max"]:
        out.append(f"{share:.0%} of user messages read like an assistant's (> {t['assistant_like_share_max']:.0%}): "
                   "the simulator slips out of its role")
    share = summary["duplicate_candidates_share"]
    if share is not None and share > t["duplicate_candidates_share_max"]:
        out.append(f"{share:.0%} of judged turns had identical candidates (> {t['duplicate_candidates_share_max']:.0%})")
    kept = summary["dpo_pairs_default_filters"]
    candidates = kept + sum(summary["dpo_dropped"].values())
    if candidates and kept < t["dpo_survival_min"] * candidates:
        out.append(f"only {kept} of {candidates} DPO pairs survive the default filters "
                   f"(dropped: {summary['dpo_dropped'] or 'none'})")
    return out


def quality_markdown(summary: dict, warned: list[str], *, title: str = "Data quality") -> str:
    """quality.md: the figures as tables, the warnings first."""
    lines = [f"# {title}", "", f"{summary['trees']} trees, {summary['user_messages']} user messages, "
             f"{summary['judged_turns']} judged turns.", ""]
    lines += ["## Warnings", ""] + ([f"- {w}" for w in warned] or ["- none"]) + [""]
    lines += ["## Replies cut at max_tokens", "", "| role | replies | cut |", "|---|---|---|"]
    lines += [f"| {r} | {summary['replies'][r]} | {pct(summary['cut_share'][r])} |" for r in ROLES]
    lines += ["", "## Labels", "",
              f"- inducer parse rate: {pct(summary['inducer_parse_rate'])}",
              f"- personalized candidate chosen: {pct(summary['personalized_chosen_rate'])}",
              f"- user messages reading like an assistant: {pct(summary['assistant_like_user_share'])}",
              f"- judged turns with identical candidates: {pct(summary['duplicate_candidates_share'])}",
              f"- user messages repeating an earlier one of their tree: {summary['repeated_user_messages']}",
              f"- empty texts: {summary['empty_texts']}", "",
              "| display position | judge chose it | personalized chosen when shown there |", "|---|---|---|"]
    for letter, share in summary["chosen_position_share"].items():
        lines.append(f"| {letter} | {pct(share)} | {pct(summary['personalized_chosen_by_position'].get(letter))} |")
    lines += ["", "| turn | personalized chosen |", "|---|---|"]
    lines += [f"| {t} | {pct(r)} |" for t, r in summary["personalized_chosen_by_turn"].items()]
    hist = summary["judge_margin_histogram"]
    lines += ["", "Judge margin (p(chosen) - p(best other)): "
              + ", ".join(f"[{a:.1f},{b:.1f}) {n}" for a, b, n in zip(hist["bins"], hist["bins"][1:], hist["counts"])),
              "", "## Training rows under the default filters", "",
              f"- DPO pairs: {summary['dpo_pairs_default_filters']} (dropped: {summary['dpo_dropped'] or 'none'})",
              f"- SFT conversations: {summary['sft_examples_default_filters']}, targets "
              f"{summary['sft_targets_default_filters']} (dropped: {summary['sft_dropped'] or 'none'})"]
    if summary["assistant_like_examples"]:
        lines += ["", "## Assistant-like user messages (examples)", ""]
        lines += [f"- {e!r}" for e in summary["assistant_like_examples"]]
    return "\n".join(lines) + "\n"


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def pct(rate: float | None) -> str:
    """A rate as a whole percentage; 'n/a' where nothing was counted."""
    return "n/a" if rate is None else f"{rate:.0%}"


def _letter(position: int) -> str:
    return chr(ord("A") + position)
