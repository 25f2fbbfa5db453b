"""The data quality report of a tree run: `jobs/generate_trees/quality.{md,png}` and the
manifest's `quality`. Reads the committed trees' nodes one part at a time (`RunOutput.committed`),
only the columns the figures need (see `aloe_ray.trees.quality` for the figures and their thresholds)."""

from __future__ import annotations

import io

from aloe_ray.pipeline.run_output import RunOutput
from aloe_ray.train.datasets import NODE_COLUMNS
from aloe_ray.trees.quality import quality_counts, quality_markdown, warnings

COLUMNS = (*NODE_COLUMNS, "induced_ok", "induced_finish_reason", "judge_choice", "judge_order",
           "judge_finish_reason")
"""The nodes columns the figures read: the training rows' (DPO survival is one figure) and the labels'."""


def read_parts(out: RunOutput):
    """The committed trees' nodes as row dicts, one part at a time (a part holds whole trees)."""
    for part in out.committed((), COLUMNS):
        yield part.nodes.to_pylist()


def write_quality_report(out: RunOutput, folder: str, *, title: str) -> dict:
    """Compute the report, write `<folder>/quality.md` and `<folder>/quality.png`; returns the
    summary with its `warnings`."""
    summary = quality_counts(read_parts(out)).summary()
    summary["warnings"] = warnings(summary)
    out.write_text(f"{folder}/quality.md", quality_markdown(summary, summary["warnings"], title=title))
    out.write_bytes(f"{folder}/quality.png", quality_plot(summary, title=title))
    return summary


def quality_plot(summary: dict, *, title: str) -> bytes:
    """Four panels: cut share per role, personalized chosen by turn, verdicts by display position,
    judge margin histogram."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7.5), layout="constrained")
    (cut, turn), (pos, margin) = fig.subplots(2, 2)
    fig.suptitle(f"{title}: {summary['trees']} trees, {summary['judged_turns']} judged turns")

    roles = list(summary["cut_share"])
    cut.bar(roles, [summary["cut_share"][r] or 0 for r in roles], color="#c0504d")
    cut.axhline(summary["thresholds"]["cut_share_max"], ls="--", color="grey", lw=1)
    cut.set_ylim(0, 1)
    cut.set_title("replies cut at max_tokens")

    turns = list(summary["personalized_chosen_by_turn"])
    turn.plot([int(t) for t in turns], [summary["personalized_chosen_by_turn"][t] or 0 for t in turns], "o-")
    turn.axhline(0.5, ls=":", color="grey", lw=1)
    turn.set_ylim(0, 1)
    turn.set_xticks([int(t) for t in turns])
    turn.set_xlabel("turn")
    turn.set_title("personalized candidate chosen")

    letters = list(summary["chosen_position_share"])
    x = range(len(letters))
    pos.bar([i - 0.2 for i in x], [summary["chosen_position_share"][p] or 0 for p in letters], width=0.4,
            label="judge chose this position")
    pos.bar([i + 0.2 for i in x], [summary["personalized_chosen_by_position"].get(p) or 0 for p in letters],
            width=0.4, label="personalized chosen when shown here")
    pos.axhline(summary["thresholds"]["position_share_max"], ls="--", color="grey", lw=1)
    pos.set_xticks(list(x), letters)
    pos.set_ylim(0, 1)
    pos.legend(fontsize=8)
    pos.set_title("verdicts by display position")

    hist = summary["judge_margin_histogram"]
    margin.bar(hist["bins"][:-1], hist["counts"], width=0.1, align="edge", color="#4f81bd")
    margin.set_xlabel("p(chosen) - p(best other)")
    margin.set_title("judge margin")

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
