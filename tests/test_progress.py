"""Progress lines: heartbeat counters, ETA from completed turns, failed polls skipped."""

from __future__ import annotations

import time

from aloe_ray.pipeline.progress import Heartbeat, Progress, ProgressBoard, TreeTally


def test_tally_counts_started_trees_and_live_turns_once_and_the_board_sums_growers():
    tally = TreeTally()
    for tree in ("t1", "t2", "t1"):
        tally.tree_started(tree)
    tally.turn_done("t1", 1)
    tally.turn_done("t1", 2)
    tally.turn_done("t2", 1)
    tally.turn_done("t2", 1)  # a retried batch grows the same tree again: not counted twice
    assert tally.snapshot() == {"started": 2, "finished": 0, "turns": 3}
    tally.tree_finished("t1")
    tally.tree_finished("t1")
    assert tally.snapshot() == {"started": 2, "finished": 1, "turns": 1}
    board = ProgressBoard()
    board.report("g1", tally.snapshot())
    board.report("g2", {"started": 5, "finished": 2, "turns": 4})
    board.report("g1", {"started": 3, "finished": 2, "turns": 0})  # a later tally replaces the earlier
    assert board.snapshot() == {"started": 8, "finished": 4, "turns": 4}


def test_stats_board_keeps_what_dead_replicas_served():
    from aloe_ray.engines.deployment import EngineStatsBoard

    board = EngineStatsBoard()
    board.report("r1", {"app": "a", "served_tokens": 30})
    board.report("r2", {"app": "a", "served_tokens": 20})
    board.report("r1", {"app": "a", "served_tokens": 45})  # a later report replaces the earlier
    board.report("r3", {"app": "a", "served_tokens": 5})  # r1's replacement starts at 0; r1's 45 stay
    assert sorted(s["served_tokens"] for s in board.snapshot()) == [5, 20, 45]


def test_heartbeat_line_shows_in_flight_turns_tokens_and_eta():
    lines: list[str] = []
    progress = Progress(total=10, already_done=2, to_grow=8, max_turns=3, interval_s=3600, log=lines.append)
    progress.started -= 100  # pretend 100 s have passed
    progress.observe(started=4, finished=0, turns=6, engine_tokens=500)
    progress.report()
    line = lines[-1]
    assert "done 2/10" in line and "in flight 4" in line and "turns 6/24" in line
    assert "5.0 tok/s" in line
    eta = int(line.split("ETA ")[1].rstrip("s"))
    assert 295 <= eta <= 305  # 18 turns left at 0.06 turns/s

    progress.update([{"tree_id": "a", "status": "ok", "failure_reason": None, "completion_tokens": 10},
                     {"tree_id": "b", "status": "failed", "failure_reason": "judge", "completion_tokens": 5}])
    progress.report()
    assert "done 4/10 (this run 1 ok, 1 failed) in flight 2" in lines[-1]
    assert progress.failures == [("b", "judge")]


def test_finished_trees_count_as_all_their_turns_and_tokens_fall_back_to_committed():
    lines: list[str] = []
    progress = Progress(total=2, already_done=0, to_grow=2, max_turns=5, interval_s=3600, log=lines.append)
    progress.update([{"tree_id": "a", "status": "failed", "failure_reason": "x", "completion_tokens": 40}])
    progress.report()
    assert "turns 5/10" in lines[-1] and "in flight 0" in lines[-1]
    assert "0.0 tok/s" not in lines[-1]  # no engine counter (openai pools): committed trees' tokens


def test_heartbeat_prints_on_a_timer_and_survives_failed_polls():
    lines: list[str] = []
    progress = Progress(total=1, already_done=0, to_grow=1, max_turns=2, interval_s=0.05, log=lines.append)
    polls = iter([RuntimeError("actor restarting")] + [{"started": 1, "turns": 1, "engine_tokens": 7}] * 1000)

    def poll():
        item = next(polls)
        if isinstance(item, Exception):
            raise item
        return item

    with Heartbeat(progress, poll):
        deadline = time.monotonic() + 10
        while not any("turns 1/2" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.02)
    assert any("progress poll failed: RuntimeError: actor restarting" in line for line in lines)
    assert any("in flight 1 | turns 1/2" in line for line in lines)
