"""Load test: a room of viewers in the dashboard while the presenter's sweep is timed. Prints numbers; asserts nothing.

    flock /tmp/lab-heavy.lock .venv/bin/python benchmarks/classroom_load --sessions 30 --browsers 2
    flock /tmp/lab-heavy.lock .venv/bin/python benchmarks/classroom_load --app-dir /path/to/old/checkout  # baseline
    flock /tmp/lab-heavy.lock .venv/bin/python benchmarks/classroom_load --paired --browsers 0 --presenter-tab

What it does, all on 127.0.0.1 and bounded in time, in `--rounds` rounds:
1. measures the same sweep from the CLI (`python -m core sweep`, the reference speeds), before every round and
   once after the last, so that the CLI's samples and the dashboard's are centred on the same moment (this
   machine's own speed drifts by up to 35% within minutes);
2. starts the lab (`python -m core serve --classroom`, or plain `streamlit run` for a checkout without a worker)
   on a fresh data folder that reuses the prepared checkpoints;
3. the presenter, a protocol-level client holding the presenter link, picks the variants on the Quantize page;
   N viewer sessions arrive and draw their first page; then the presenter presses Measure and keeps the tab open
   (its progress fragment reruns as a browser's would), so every viewer is active for the whole sweep;
4. the viewers open pages, move widgets, queue a job on the Quantize page (behind the presenter's) and open the
   Arena, until the sweep ends: most speak Streamlit's websocket protocol (one light asyncio process), `--browsers` of them are
   real Chromium pages (Debian's /usr/bin/chromium through Playwright, at idle priority since they stand in for
   the viewers' own machines; no browser is downloaded); then the lab and its worker are stopped;
5. reports page response p50/p90, errors shown, jobs queued/completed, each variant's decode tok/s from the
   dashboard against the CLI's (pooled over the rounds, and each round against the CLI runs around it), how
   many sessions each record says were connected, and the load generator's CPU share; the median of the rounds'
   ratios with a bootstrap 95% interval (what says whether a 5% difference is shown at all); the tracebacks in
   each round's server log (kept in /tmp/classroom-load-logs/); and the share the hypervisor stole meanwhile.

`--paired` answers the same question with less drift in it: the lab starts once and the room stays connected;
each round measures every variant three times, a minute apart and in a rotating order (the CLI with the room paused
and the presenter's tab blank, the dashboard with the room active, the dashboard with only the presenter), and
each dashboard speed is divided by the CLI's of the same variant and round. It also reports how much of the machine
the web server, the worker, the presenter's tab and the load generator used during each measurement.

On a machine whose speed drifts, a few rounds leave a 5% question open; `--pool A.json B.json ...` reads earlier
`--paired --json` results and reports their rounds together (measuring nothing), with each file's CPU and page p90.
A `--paired --json` run rewrites its file after every measurement (marked `"finished": false` until it ends), so a
run stopped early still pools what it measured.

Viewer jobs left waiting when the sweep ends are removed from the queue (the test is bounded); the presenter's
sweep is the measurement. The Arena never generates during a timed job (by design), so viewers read its tally.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

if not __package__:  # `python benchmarks/classroom_load` runs this file on its own: run it as the package it is
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    runpy.run_module("classroom_load", run_name="__main__", alter_sys=True)
    sys.exit()

# The package's own modules import only once this file runs as part of it (above), hence imports below code.
import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

from . import ROOT  # noqa: E402
from .lab import labels_for  # noqa: E402
from .paired import run_paired  # noqa: E402
from .report import pool, write_json_atomically  # noqa: E402
from .rounds import run_rounds  # noqa: E402


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="classroom_load", description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=30, help="viewer sessions in all (browsers included)")
    ap.add_argument("--browsers", type=int, default=2, help="how many of them are real Chromium pages")
    ap.add_argument("--presenter-tab", action="store_true",
                    help="also open the presenter's own Chromium tab on the Quantize page (normal priority)")
    ap.add_argument("--viewer-jobs", type=int, default=3, help="viewers that queue a job on the Quantize page")
    ap.add_argument("--techniques", default="fp32,bf16,nf4")
    ap.add_argument("--rounds", type=int, default=2, help="presenter sweeps under load, with the CLI before, "
                                                          "between and after them")
    ap.add_argument("--repeats", type=int, default=10, help="timed runs per variant, on the page and in the CLI")
    ap.add_argument("--mc-max-items", type=int, default=0, help="questions scored per variant (0 = all, as the page)")
    ap.add_argument("--max-s", type=float, default=1200, help="stop a round after this long even if its sweep "
                                                              "has not ended")
    ap.add_argument("--app-dir", type=Path, default=ROOT, help="checkout to serve (an older one gives the baseline)")
    ap.add_argument("--models-from", type=Path, default=ROOT / "data" / "models",
                    help="prepared checkpoints to reuse (linked, never copied or changed)")
    ap.add_argument("--skip-cli", action="store_true", help="do not measure the CLI reference")
    ap.add_argument("--paired", action="store_true",
                    help="start the lab once; each round measures each variant from the CLI, from the dashboard with "
                         "the room active, and with only the presenter, in a rotating order about a minute apart")
    ap.add_argument("--json", type=Path, help="write the numbers here too")
    ap.add_argument("--pool", type=Path, nargs="+", metavar="JSON",
                    help="measure nothing: report the rounds of these --paired --json results together")
    return ap


def fresh_data_folder(args, python: str) -> tuple[Path, dict]:
    """A data folder of the lab's own under test, with the prepared checkpoints linked in; and the lab's environment."""
    data = Path(tempfile.mkdtemp(prefix="classroom-load-"))
    env = os.environ | {"LAB_DATA_DIR": str(data), "LAB_WORKER_AUTOSTART": "1"}
    if args.models_from.is_dir():
        (data / "models").symlink_to(args.models_from.resolve())
    else:
        subprocess.run([python, "-m", "core", "prepare"], cwd=ROOT, env=env, check=True)
    return data, env


def main() -> None:
    args = parser().parse_args()
    if args.pool:
        print(json.dumps(pool(args.pool), indent=2))
        return
    args.browsers = min(args.browsers, args.sessions)
    keys = [k.strip() for k in args.techniques.split(",") if k.strip()]
    labels = labels_for(keys)
    python = sys.executable
    data, env = fresh_data_folder(args, python)
    try:
        result = (run_paired if args.paired else run_rounds)(args, keys, labels, python, env, data)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    # Every measurement of a --paired run goes to --json only; the rounds' result has none and prints whole.
    print(json.dumps({k: v for k, v in result.items() if k != "measurements"}, indent=2))
    if args.json:
        write_json_atomically(args.json, result)


if __name__ == "__main__":
    main()
