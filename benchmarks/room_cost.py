"""What a room of viewers costs a timed decode, measured finely enough to see a few percent. Prints numbers; asserts
nothing.

    flock /tmp/lab-heavy.lock .venv/bin/python benchmarks/room_cost.py --techniques fp32,bf16,nf4 --blocks 7

classroom_load --paired compares whole measurements a minute apart, each with its own model load, and this
machine's speed drifts by up to 35% within minutes, so its ratios spread by +-15% per round. This one keeps the
model loaded and lets the room alternate under it: the lab runs as for a class (`core serve --classroom`, the
presenter's Chromium tab on the Quantize page, a presenter session and `--sessions` protocol viewers), and a timer
process loads one variant once and times it through the lab's gate exactly as the worker does
(`benchmark.timed_generation` inside the gate's timing phase and timed runs, page turns between decode steps
included), phase after phase, with a pause between phases in which pages run freely (the worker scores quality
there). Every `--block-s` seconds the room switches between active (the viewers browse, move widgets and vote)
and paused (only the presenter); runs that straddle a switch are dropped. Each active block is divided by the mean
of the two paused blocks around it, which cancels drift slower than a block.

It does not go through the job queue, the worker process or the CLI: classroom_load does that. What it isolates
is the one thing the room can change, the speed of a timed decode on the shared cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from classroom_load import ROOT
from classroom_load.browsers import CHROMIUM, presenter_tab
from classroom_load.lab import LOGS, free_port, start_lab, stop_lab
from classroom_load.machine import StealMeter, cpu_name, processes_cpu_s, share_pct
from classroom_load.paired import Presenter
from classroom_load.session import Stats, viewer
from classroom_load.stats import median, median_ci95, pct

STATES = ("room", "alone")
SWITCH = "switch"  # the room is changing: runs that see it belong to neither state


# ---------------------------------------------------------------- the timer (a process of its own)


def timer(key: str, minutes: float, repeats: int, gap_s: float, state_path: Path, out_path: Path) -> None:
    """Time `key` through the lab's gate until `minutes` have passed; one JSON line per timed run."""
    from core import models, runtimes, techniques
    from core.experiments import sweep
    from core.launch import quiet
    from core.launch.jobqueue import JobQueue
    from core.measure import benchmark
    from core.paths import data_dir

    settings = sweep.SweepSettings(repeats=repeats)
    inputs = sweep.prepare_inputs(models.DEFAULT_MODEL, settings, lambda _msg: None)
    technique = techniques.get(key)
    runner = runtimes.load(technique, technique.runtime, inputs.checkpoint, inputs.env.device, inputs.env.threads,
                           lambda _msg: None)
    gate, queue = quiet.Gate(data_dir()), JobQueue(data_dir() / "queue.sqlite")
    benchmark.set_timed_section(gate.timed_run, lambda: gate.timing_phase(lambda: queue.sessions_connected() > 0))
    end = time.monotonic() + 60 * minutes
    with out_path.open("a") as out:
        while time.monotonic() < end:
            with benchmark.timing_phase():
                for i in range(1 + repeats):  # a warm-up, then the timed runs, as bench_generation does
                    before, turns0 = state_path.read_text(), gate.stats.turns_between_steps
                    run = benchmark.timed_generation(runner, inputs.prompt_ids, settings.new_tokens)
                    after = state_path.read_text()
                    if i and before == after and before in STATES:
                        out.write(json.dumps({"state": before, "at_s": time.time(), "technique": key,
                                              "decode_tokens_per_s": run.decode_tokens_per_s,
                                              "turns": gate.stats.turns_between_steps - turns0,
                                              "others_pct": None if run.others_share is None
                                              else round(100 * run.others_share, 2)}) + "\n")
                        out.flush()
            time.sleep(gap_s)
    runner.close()


# ---------------------------------------------------------------- the room


def cpu_s(procs: dict[str, list[psutil.Process]]) -> dict[str, float | None]:
    """CPU seconds so far of each part (None for a part with a process gone: the timer ends inside its last block)."""
    return {name: processes_cpu_s(group) for name, group in procs.items()}


def parts(lab: int, timer_pid: int) -> dict[str, list[psutil.Process]]:
    """The lab's web server (its worker idles here), the timer, the presenter's tab and this load generator."""
    me = psutil.Process()
    kids = me.children(recursive=True)
    return {"web_server": [psutil.Process(lab)], "timer": [psutil.Process(timer_pid)],
            "presenter_tab": [k for k in kids if "chrom" in k.name().lower()], "load_generator": [me]}


async def alternate(args, url: str, token: str, key: str, data: Path, state_path: Path, out_path: Path,
                    stats: Stats, pstats: Stats, lab_pid: int) -> list[dict]:
    """Start the timer for one variant and switch the room every block until it ends; CPU share of each part by
    block."""
    stop, room_on, sweeping = asyncio.Event(), asyncio.Event(), asyncio.Event()
    tasks = []
    for i in range(args.sessions):
        tasks.append(asyncio.create_task(viewer(url, stats, stop, sweeping, False, seed=i, active=room_on)))
        await asyncio.sleep(0.2)  # people arrive over a few seconds
    boss = Presenter(url, token, pstats)
    await boss.open(args)
    tasks.append(asyncio.create_task(boss.stay(stop)))
    state_path.write_text(SWITCH)
    timer_proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--timer", key, "--minutes", str(args.blocks * args.block_s / 60),
        "--repeats", str(args.repeats), "--state", str(state_path), "--out", str(out_path),
        env=os.environ | {"LAB_DATA_DIR": str(data)})
    groups = parts(lab_pid, timer_proc.pid)
    blocks, on = [], False  # paused first: every active block then has a paused one on each side
    try:
        while timer_proc.returncode is None:
            (room_on.set if on else room_on.clear)()
            await asyncio.sleep(3)  # paused sessions finish what they had started
            state = STATES[0] if on else STATES[1]
            state_path.write_text(state)
            cpu0, t0 = cpu_s(groups), time.monotonic()
            try:
                await asyncio.wait_for(timer_proc.wait(), args.block_s)
            except asyncio.TimeoutError:
                pass
            wall = time.monotonic() - t0
            state_path.write_text(SWITCH)
            cpu1 = cpu_s(groups)
            blocks.append({"state": state, "cpu_pct_of_machine": {n: share_pct(cpu0[n], cpu1[n], wall) for n in cpu0}})
            print(f"{key} block {len(blocks)} {state}: cpu % {blocks[-1]['cpu_pct_of_machine']}", file=sys.stderr,
                  flush=True)
            on = not on
    finally:
        stop.set()
        room_on.set()
        if timer_proc.returncode is None:
            timer_proc.kill()
        await asyncio.gather(*tasks, return_exceptions=True)
        await boss.session.__aexit__(None, None, None)
    return blocks


def by_block(runs: list[dict]) -> list[tuple[str, float, int]]:
    """(state, median decode tokens/s, runs) of each stretch of consecutive runs in one state."""
    stretches: list[tuple[str, list[float]]] = []
    for run in runs:
        if not stretches or stretches[-1][0] != run["state"]:
            stretches.append((run["state"], []))
        stretches[-1][1].append(run["decode_tokens_per_s"])
    return [(s, median(v), len(v)) for s, v in stretches]


def summary(key: str, runs: list[dict], blocks: list[dict]) -> dict:
    stretches = by_block(runs)
    ratios = [s[1] / ((before[1] + after[1]) / 2) for before, s, after in zip(stretches, stretches[1:], stretches[2:])
              if s[0] == "room" and before[0] == after[0] == "alone"]
    return {
        "technique": key,
        **{f"{state}_decode_tok_s_median": round(median([r["decode_tokens_per_s"] for r in runs
                                                          if r["state"] == state]), 2) for state in STATES},
        **{f"{state}_runs": sum(r["state"] == state for r in runs) for state in STATES},
        "blocks": [(s, round(m, 2), n) for s, m, n in stretches],
        "room_over_alone_by_block": [round(x, 3) for x in ratios],
        "room_over_alone_median": round(median(ratios), 3) if ratios else None,
        "room_over_alone_ci95": median_ci95(ratios),
        **{f"{state}_page_turns_per_run": round(sum(r["turns"] for r in runs if r["state"] == state)
                                                / max(1, sum(r["state"] == state for r in runs)), 2) for state in STATES},
        **{f"{state}_other_processes_cpu_pct_median": median([r["others_pct"] for r in runs if r["state"] == state
                                                              and r["others_pct"] is not None]) for state in STATES},
        "cpu_pct_of_machine_median": {state: {part: median([b["cpu_pct_of_machine"][part] for b in blocks
                                                            if b["state"] == state
                                                            and b["cpu_pct_of_machine"][part] is not None])
                                              for part in (blocks[0]["cpu_pct_of_machine"] if blocks else {})}
                                      for state in STATES},
    }


def run(args) -> dict:
    keys = [k.strip() for k in args.techniques.split(",") if k.strip()]
    data = Path(tempfile.mkdtemp(prefix="room-cost-"))
    env = os.environ | {"LAB_DATA_DIR": str(data), "LAB_WORKER_AUTOSTART": "1"}
    (data / "models").symlink_to(args.models_from.resolve())
    LOGS.mkdir(exist_ok=True)
    log = LOGS / "room-cost.log"
    lab, token = start_lab(ROOT, sys.executable, env, free_port(), log)
    url = f"http://127.0.0.1:{lab.args[lab.args.index('--port') + 1]}"
    stats, pstats, bstats = Stats(), Stats(), Stats()
    stop_tab = threading.Event()
    tab = threading.Thread(target=presenter_tab, args=(url, token, bstats, stop_tab), daemon=True)
    if Path(CHROMIUM).exists():
        tab.start()
    steal, results = StealMeter(), []
    try:
        for key in keys:
            out = data / f"runs-{key}.jsonl"
            blocks = asyncio.run(alternate(args, url, token, key, data, data / "room-state", out, stats, pstats,
                                           lab.pid))
            runs = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
            if args.json and out.exists():  # every timed run, for a closer look than the summary gives
                shutil.copy(out, args.json.with_name(f"{args.json.stem}-{key}-runs.jsonl"))
            results.append(summary(key, runs, blocks))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        stop_tab.set()
        if tab.is_alive():
            tab.join(30)
        stop_lab(lab, data)
        shutil.rmtree(data, ignore_errors=True)
    page_s = stats.page_s + pstats.page_s + bstats.page_s
    ratios = [x for r in results for x in r["room_over_alone_by_block"]]
    return {"cpu": cpu_name(), "cores": psutil.cpu_count(), "sessions": args.sessions, "block_s": args.block_s,
            "repeats_per_phase": args.repeats, "page_runs": len(page_s),
            "page_response_s_p50": round(pct(page_s, 0.5), 3), "page_response_s_p90": round(pct(page_s, 0.9), 3),
            "errors_shown": len(stats.errors + pstats.errors + bstats.errors),
            "error_samples": sorted(set(stats.errors + pstats.errors + bstats.errors))[:8],
            "server_tracebacks": log.read_text(errors="replace").count("Traceback (most recent"),
            "hypervisor_steal_pct": steal.pct(), "variants": results,
            "all_variants_room_over_alone_median": round(median(ratios), 3) if ratios else None,
            "all_variants_room_over_alone_ci95": median_ci95(ratios)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--techniques", default="fp32,bf16,nf4")
    ap.add_argument("--sessions", type=int, default=30, help="protocol viewer sessions")
    ap.add_argument("--blocks", type=int, default=7, help="blocks per variant, paused and active in turn, paused first")
    ap.add_argument("--block-s", type=float, default=60.0, help="seconds the room stays in one state")
    ap.add_argument("--repeats", type=int, default=10, help="timed runs per timing phase (after one warm-up)")
    ap.add_argument("--mc-max-items", type=int, default=0, help=argparse.SUPPRESS)  # the presenter's page settings
    ap.add_argument("--models-from", type=Path, default=ROOT / "data" / "models")
    ap.add_argument("--json", type=Path, help="write the numbers here too")
    ap.add_argument("--timer", metavar="TECHNIQUE", help=argparse.SUPPRESS)  # the timer process
    ap.add_argument("--minutes", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.timer:
        timer(args.timer, args.minutes, args.repeats, gap_s=5.0, state_path=args.state, out_path=args.out)
        return
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
