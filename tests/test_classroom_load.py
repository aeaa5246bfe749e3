"""benchmarks/classroom_load --pool: earlier --paired results reported together. The benchmark prints numbers and
asserts nothing; this checks that pooling keeps each round's pairing and refuses files it cannot pair."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from core.measure import intervals

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
machine = pytest.importorskip("classroom_load.machine", reason="benchmarks/classroom_load needs psutil")
report = pytest.importorskip("classroom_load.report")
stats = pytest.importorskip("classroom_load.stats")


def measurement(rnd: int, condition: str, tok_s: float) -> dict:
    return {"round": rnd, "technique": "fp32", "condition": condition,
            "cpu_pct_of_machine": {"web_server": 1.0, "worker": 50.0},
            "record": {"decode_tokens_per_s_median": tok_s, "settings": {"sessions_connected": 31}}}


def paired_result(path: Path, speeds: list[tuple[float, float, float]]) -> Path:
    """speeds: (cli, room, alone) decode tokens/s of each round."""
    measured = [measurement(r, c, s) for r, trio in enumerate(speeds) for c, s in zip(("cli", "room", "alone"), trio)]
    path.write_text(json.dumps({"mode": "paired", "cpu": "AMD EPYC", "rounds": len(speeds),
                                "page_response_s_p90": 2.0, "errors_shown": 0, "measurements": measured}))
    return path


def test_pooling_keeps_each_round_paired_with_its_own_cli(tmp_path):
    # Both files have a round 0; a machine twice as fast in the second must not pair its room with the first's CLI.
    a = paired_result(tmp_path / "a.json", [(10.0, 9.0, 10.0), (12.0, 12.0, 11.4)])
    b = paired_result(tmp_path / "b.json", [(20.0, 19.0, 19.0)])
    pooled = report.pool([a, b])
    assert pooled["rounds"] == 3 and [s["file"] for s in pooled["pooled"]] == [str(a), str(b)]
    fp32 = pooled["variants"]["fp32"]
    assert fp32["room_over_cli_by_round"] == [0.9, 1.0, 0.95]
    assert fp32["room_over_cli_median"] == 0.95
    assert fp32["alone_over_cli_by_round"] == [1.0, 0.95, 0.95]


def test_pooling_refuses_a_result_without_pairs(tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"rounds": 2, "variants": []}))  # a result without --paired
    with pytest.raises(SystemExit, match="not a --paired result"):
        report.pool([plain])
    broken = tmp_path / "broken.json"
    broken.write_text('{"mode": "paired", ')  # cut off while being written
    with pytest.raises(SystemExit, match="cannot read it as JSON"):
        report.pool([broken])


def test_a_run_stopped_early_pools_what_it_finished(tmp_path):
    # A --paired run rewrites its file after each measurement; stopped during round 1, that round has only its CLI.
    path = paired_result(tmp_path / "cut.json", [(10.0, 9.5, 10.0)])
    partial = json.loads(path.read_text()) | {"finished": False}
    partial["measurements"].append(measurement(1, "cli", 12.0))
    report.write_json_atomically(path, partial)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file became the result, nothing left beside it
    pooled = report.pool([path])
    assert pooled["pooled"][0]["finished"] is False
    fp32 = pooled["variants"]["fp32"]
    assert fp32["room_over_cli_by_round"] == [0.95]  # round 1's CLI is paired with nothing, so it adds no ratio
    assert fp32["cli_decode_tok_s_by_round"] == [10.0, 12.0]


def test_the_workers_cpu_share_counts_job_processes_that_have_ended():
    """The worker runs each job in a child process; a reading taken after the child ended must still count it."""
    import subprocess
    import time

    import psutil

    me = psutil.Process()
    tree0, own0 = machine.tree_cpu_s(me), machine.processes_cpu_s([me])
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5:\n    pass"
    child = subprocess.Popen([sys.executable, "-c", spin])
    deadline = time.monotonic() + 60
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert machine.command_line(psutil.Process(child.pid)) == ""  # ended, not yet waited for: no command line to read
    child.wait()
    children_s = (machine.tree_cpu_s(me) - tree0) - (machine.processes_cpu_s([me]) - own0)
    assert children_s >= 0.3  # of the 0.5 s it spun: the kernel counts in clock ticks, rounding down


def test_the_median_interval_is_cores_bootstrap_as_reported():
    """The benchmark's 95% interval of a median is core's bootstrap (4000 draws, seed 0), rounded to 3 places."""
    ratios = [1.02, 0.96, 0.91, 0.98, 1.05, 0.97, 0.94]
    core = intervals.median_of(ratios, seed=0, draws=4000)
    assert stats.median_ci95(ratios) == [round(core.low, 3), round(core.high, 3)]
    assert stats.median_ci95(ratios) == [0.94, 1.02]  # what the benchmark's own bootstrap printed before
    assert stats.median_ci95([0.9, 1.0]) is None  # two rounds: no interval is printed
