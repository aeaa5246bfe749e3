"""The arithmetic of benchmarks/room_cost.py: which timed runs make a block, and what each active block is divided
by. The benchmark itself prints numbers and asserts nothing; these check that its numbers mean what it says."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
room_cost = pytest.importorskip("room_cost", reason="benchmarks/room_cost.py needs psutil and websockets")


def runs(*blocks: tuple[str, list[float]]) -> list[dict]:
    out, t = [], 0.0
    for state, speeds in blocks:
        for speed in speeds:
            t += 2.0
            out.append({"state": state, "at_s": t, "technique": "fp32", "decode_tokens_per_s": speed, "turns": 0,
                        "others_pct": 1.0})
    return out


def test_each_active_block_is_divided_by_the_mean_of_the_paused_blocks_around_it():
    timed = runs(("alone", [10, 10, 10]), ("room", [9, 9, 9]), ("alone", [8, 8]), ("room", [8, 8]), ("alone", [6]))
    result = room_cost.summary("fp32", timed, blocks=[])
    assert result["blocks"] == [("alone", 10, 3), ("room", 9, 3), ("alone", 8, 2), ("room", 8, 2), ("alone", 6, 1)]
    # 9 / mean(10, 8) and 8 / mean(8, 6): drift that runs through both neighbours cancels
    assert result["room_over_alone_by_block"] == [1.0, round(8 / 7, 3)]
    assert result["room_runs"] == 5 and result["alone_runs"] == 6


def test_an_active_block_without_a_paused_one_after_it_is_not_counted():
    timed = runs(("alone", [10]), ("room", [5]))
    result = room_cost.summary("fp32", timed, blocks=[])
    assert result["room_over_alone_by_block"] == []
    assert result["room_over_alone_median"] is None


def test_a_part_whose_process_ended_has_an_unknown_share_and_is_left_out_of_the_median():
    assert room_cost.share_pct(10.0, None, wall_s=30.0) is None
    assert room_cost.share_pct(None, 12.0, wall_s=30.0) is None
    assert room_cost.share_pct(10.0, 10.6, wall_s=30.0) == pytest.approx(100 * 0.6 / (30 * room_cost.psutil.cpu_count()),
                                                                         abs=0.01)
    blocks = [{"state": "alone", "cpu_pct_of_machine": {"timer": 60.0}},
              {"state": "alone", "cpu_pct_of_machine": {"timer": None}},
              {"state": "room", "cpu_pct_of_machine": {"timer": 50.0}}]
    result = room_cost.summary("fp32", runs(("alone", [10])), blocks)
    assert result["cpu_pct_of_machine_median"] == {"alone": {"timer": 60.0}, "room": {"timer": 50.0}}
