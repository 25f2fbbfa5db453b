"""The ALOE benchmark report: metrics with bootstrap intervals, a Markdown table, the AL(k) plot,
and the side-by-side comparison of several evaluations.

`build_report` is pure; the plots import matplotlib (Agg backend) when they are drawn.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from aloe_ray.eval.metrics import bootstrap_intervals, summarize


def scores_by_persona(turn_rows: Sequence[dict], turns: int) -> dict[str, list[float | None]]:
    """persona id -> score per turn 1..turns (None: missing) from rows of the turns table."""
    scores: dict[str, list[float | None]] = {}
    for row in turn_rows:
        per_turn = scores.setdefault(row["persona_id"], [None] * turns)
        if 1 <= row["turn"] <= turns:
            per_turn[row["turn"] - 1] = row["score"]
    return scores


def truncated_shares(turn_rows: Sequence[dict], turns: int) -> tuple[list[float | None], float | None]:
    """Share of replies cut at the model's token limit (finish_reason 'length') per turn 1..turns
    (None where the turn has no reply) and overall (None without replies)."""
    per_turn: list[list[bool]] = [[] for _ in range(turns)]
    for row in turn_rows:
        if 1 <= row["turn"] <= turns:
            per_turn[row["turn"] - 1].append(row.get("reply_finish_reason") == "length")
    shares = [sum(cut) / len(cut) if cut else None for cut in per_turn]
    every = [c for cut in per_turn for c in cut]
    return shares, (sum(every) / len(every) if every else None)


def build_report(turn_rows: Sequence[dict], rollout_rows: Sequence[dict], *, turns: int, meta: dict,
                 samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """report.json: the metrics over the 'ok' rollouts only (a failed rollout's turns are in the
    turns table but never in a metric), their intervals, per-turn and per-persona detail,
    missing-score counts and the share of replies cut at the token limit. `meta` (name, run id,
    models, judge settings, personas requested and available...) is kept."""
    ok = {r["rollout_id"] for r in rollout_rows if r["status"] == "ok"}
    rows = [r for r in turn_rows if r["rollout_id"] in ok]
    scores = scores_by_persona(rows, turns)
    report = {**meta, **summarize(scores)}
    report.update(bootstrap_intervals(scores, samples=samples, seed=seed, level=level))
    missing_by_turn = [sum(1 for s in scores.values() if s[k] is None) for k in range(turns)]
    cut_by_turn, cut = truncated_shares(rows, turns)
    report.update({
        "turns": turns,
        "personas": len(scores),
        "personas_evaluated": len(scores),
        "rollouts_failed": sum(1 for r in rollout_rows if r["status"] != "ok"),
        "scores": sum(1 for s in scores.values() for v in s if v is not None),
        "scores_missing": sum(missing_by_turn),
        "scores_missing_by_turn": missing_by_turn,
        "replies_truncated": sum(1 for r in rows if r.get("reply_finish_reason") == "length"),
        "replies_truncated_share": cut,
        "replies_truncated_share_by_turn": cut_by_turn,
        "ci_level": level,
        "bootstrap_samples": samples,
        "per_persona": sorted(
            ({"persona_id": r["persona_id"], "mean_score": r["mean_score"], "IR": r["ir"], "R2": r["r2"],
              "scores_missing": r["scores_missing"], "scores": scores.get(r["persona_id"])}
             for r in rollout_rows if r["rollout_id"] in ok),
            key=lambda p: p["persona_id"]),
        "failures": [{"persona_id": r["persona_id"], "reason": r["failure_reason"]}
                     for r in rollout_rows if r["status"] != "ok"],
    })
    return report


def _num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _requested(report: dict) -> str:
    """'4 personas evaluated of 4 requested (100 available)': what was asked for next to what ran."""
    asked = report.get("personas_requested", "?")
    asked = "all" if asked is None else asked
    available = report.get("personas_available")
    tail = f" ({available} available)" if available is not None else ""
    return f"{report['personas']} personas evaluated of {asked} requested{tail}"


def _ci(ci: Sequence[float] | None, digits: int = 3) -> str:
    return "–" if not ci else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def report_markdown(report: dict) -> str:
    """report.md: the summary line, AL(k) per turn with intervals, and the per-persona table."""
    pct = round(100 * report.get("ci_level", 0.95))
    lines = [
        f"# ALOE benchmark: {report.get('name', '?')}",
        "",
        f"Model under test `{report.get('models', {}).get('model', '?')}`, judge "
        f"`{report.get('models', {}).get('judge', '?')}` ({report.get('scoring', '?')} scoring, "
        f"{'with' if report.get('judge_history', True) else 'without'} history), simulator "
        f"`{report.get('models', {}).get('simulator', '?')}`; {_requested(report)} x "
        f"{report['turns']} turns; {report['scores_missing']} missing scores, "
        f"{report['rollouts_failed']} failed rollouts (left out of every metric). Intervals: {pct}% "
        "bootstrap over personas.",
        "",
        f"Replies cut at the token limit (finish_reason 'length'): {_pct(report.get('replies_truncated_share'))} "
        f"({report.get('replies_truncated', 0)} replies).",
        "",
        "| metric | value | CI |",
        "|---|---|---|",
    ]
    for m in ("IR", "R2", "N_IR", "N_R2"):
        lines.append(f"| {m} | {_num(report[m])} | {_ci(report.get(f'{m}_CI'))} |")
    lines += ["", "| turn k | AL(k) | AL CI | N-AL(k) | missing | cut |", "|---|---|---|---|---|---|"]
    al_ci = report.get("AL_CI") or [None] * len(report["AL"])
    cut = report.get("replies_truncated_share_by_turn") or [None] * len(report["AL"])
    for k, (al, ci, nal, miss, c) in enumerate(zip(report["AL"], al_ci, report["N_AL"],
                                                    report["scores_missing_by_turn"], cut), start=1):
        lines.append(f"| {k} | {_num(al)} | {_ci(ci)} | {_num(nal)} | {miss} | {_pct(c)} |")
    lines += ["", "## Per persona", "", "| persona | mean score | IR | R2 | missing |", "|---|---|---|---|---|"]
    for p in report["per_persona"]:
        lines.append(f"| {p['persona_id']} | {_num(p['mean_score'])} | {_num(p['IR'])} | {_num(p['R2'])} "
                     f"| {p['scores_missing']} |")
    for f in report.get("failures", []):
        lines.append(f"\nFailed: {f['persona_id']}: {f['reason']}")
    return "\n".join(lines) + "\n"


def compare_markdown(reports: Sequence[dict], labels: Sequence[str]) -> str:
    """One table: a row per evaluation, AL(1..K) then IR, R2, N-IR, N-R2 with intervals."""
    turns = max(len(r["AL"]) for r in reports)
    head = ["eval", "personas", *(f"AL({k})" for k in range(1, turns + 1)), "IR", "IR CI", "R2", "N_IR",
            "N_IR CI", "N_R2", "missing"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in zip(labels, reports):
        al = [_num(v, 2) for v in r["AL"]] + ["–"] * (turns - len(r["AL"]))
        cells = [label, str(r.get("personas", "?")), *al, _num(r["IR"]), _ci(r.get("IR_CI")), _num(r["R2"]),
                 _num(r["N_IR"]), _ci(r.get("N_IR_CI")), _num(r["N_R2"]), str(r.get("scores_missing", "?"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def al_plot_png(reports: Sequence[dict], labels: Sequence[str], *, title: str = "ALOE: alignment level per turn") -> bytes:
    """PNG of AL(k) over turns, one line per evaluation, with its interval band where known."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=120)
    ax = fig.subplots()
    for label, r in zip(labels, reports):
        ks = [k for k, v in enumerate(r["AL"], start=1) if v is not None]
        vals = [r["AL"][k - 1] for k in ks]
        line, = ax.plot(ks, vals, marker="o", label=f"{label} (IR {_num(r['IR'])})")
        band = [(k, ci) for k, ci in zip(range(1, len(r["AL"]) + 1), r.get("AL_CI") or []) if ci]
        if band:
            ax.fill_between([k for k, _ in band], [c[0] for _, c in band], [c[1] for _, c in band],
                            color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel("turn k")
    ax.set_ylabel("AL(k): mean judge score")
    ax.set_ylim(0.9, 5.1)
    turns = max((len(r["AL"]) for r in reports), default=1)
    ax.set_xticks(range(1, turns + 1))
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
