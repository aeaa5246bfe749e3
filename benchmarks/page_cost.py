"""Benchmark: the CPU one run of each page's script costs, with a given number of results in the store.

    .venv/bin/python benchmarks/page_cost.py --records 0 60 --from /tmp/runs/P7.json

In a classroom every viewer's page run is CPU the web server spends on the cores the worker times, and a room's page
wait grows with it (a timed run lets waiting pages in, then waits for them to finish). The results come from
measurements the lab made: the records of a `classroom_load --paired --json` file, or else of the lab's own store,
copied with fresh ids into a throwaway store (the lab's store is only read). Each page runs in-process through
Streamlit's AppTest, once to warm up, then `--runs` times; CPU time counts every thread of this process.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VIEWER_PAGES = ["home", "quantize", "tradeoff_map", "arena", "decide", "report", "moe", "lora", "distill"]


def measured_records(source: Path | None) -> list[dict]:
    from core.store import ResultStore

    if source is None:
        return [r.to_dict() for r in ResultStore().all()]
    try:
        result = json.loads(source.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{source}: cannot read it as JSON ({e}); pass a file written by classroom_load --paired --json")
    return [m["record"] for m in result.get("measurements", []) if m.get("record")]


def page_cpu_ms(n_records: int, records: list[dict], runs: int) -> dict[str, float]:
    """Median CPU milliseconds of one script run per page, in a fresh data folder holding n_records results."""
    os.environ["LAB_DATA_DIR"] = tempfile.mkdtemp(prefix="page-cost-")
    models = ROOT / "data" / "models"
    if models.is_dir():  # pages that look for prepared checkpoints find them, as in the lab
        (Path(os.environ["LAB_DATA_DIR"]) / "models").symlink_to(models)
    from streamlit.testing.v1 import AppTest

    from core.store import ResultStore
    from core.store.records import VariantRecord, new_record_id

    ResultStore().add_many(VariantRecord.from_dict(records[i % len(records)] | {"record_id": new_record_id()})
                           for i in range(n_records))
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    out = {}
    for page in VIEWER_PAGES:
        app.switch_page(f"pages/{page}.py").run()  # warm-up: imports and caches, as a server that has run a while
        cpu = []
        for _ in range(runs):
            t0 = time.process_time()
            app.run()
            cpu.append(1000 * (time.process_time() - t0))
        out[page] = round(statistics.median(cpu), 1)
        if app.exception:
            raise SystemExit(f"{page}: the page raised {app.exception[0].message}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, nargs="+", default=[0, 60], help="results in the store, one pass each")
    ap.add_argument("--from", dest="source", type=Path, help="a classroom_load --paired --json result to take them from")
    ap.add_argument("--runs", type=int, default=5, help="timed script runs per page")
    args = ap.parse_args()
    records = measured_records(args.source)
    if max(args.records) > 0 and not records:
        raise SystemExit("no measured results to copy: pass --from FILE.json, or measure a sweep first")
    from core.measure.benchmark import cpu_model

    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; median of {args.runs} runs")
    for n in args.records:
        ms = page_cpu_ms(n, records, args.runs)
        print(f"{n:4d} records: " + "  ".join(f"{p} {v:.0f}" for p, v in ms.items())
              + f"  | mean {statistics.mean(ms.values()):.0f} ms a page run", flush=True)


if __name__ == "__main__":
    main()
