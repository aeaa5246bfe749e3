"""Benchmark: the full quantization sweep's wall time and each variant's share of the bandwidth limit.

    .venv/bin/python benchmarks/sweep_bench.py                 # one sweep of every variant
    .venv/bin/python benchmarks/sweep_bench.py --sweeps 2      # two back-to-back sweeps: run-to-run drift

Prints numbers; asserts nothing (speed is not a unit test). Results also go to the results store.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import models, techniques  # noqa: E402
from core.experiments.sweep import SweepSettings, run_sweep  # noqa: E402
from core.store import ResultStore  # noqa: E402

TARGET_S = 300  # the sweep of all eight variants should finish within 5 minutes on a 2-core laptop-class CPU


def one_sweep(model: str, keys: list[str], store: ResultStore | None) -> tuple[float, list]:
    t0 = time.perf_counter()
    records = run_sweep(model, keys, SweepSettings(), store=store)
    return time.perf_counter() - t0, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    quantization = [k for k, t in techniques.TECHNIQUES.items() if t.family in ("reference", "quantization")]
    parser.add_argument("--techniques", default=",".join(quantization))
    parser.add_argument("--sweeps", type=int, default=1)
    parser.add_argument("--no-store", action="store_true")
    args = parser.parse_args()
    keys = techniques.parse_keys(args.techniques)
    models.quiet_library_output()
    store = None if args.no_store else ResultStore()

    runs = [one_sweep(args.model, keys, store) for _ in range(args.sweeps)]
    first = runs[0][1]
    print(f"hardware: {first[0].hardware}; threads {first[0].threads}; bandwidth {first[0].bandwidth_gb_s:.1f} GB/s")
    for i, (wall, _) in enumerate(runs, 1):
        verdict = "within" if wall <= TARGET_S else "over"
        print(f"sweep {i}: wall time {wall:.1f} s for {len(keys)} variants ({verdict} the {TARGET_S} s target)")
    print(f"{'variant':10} {'MB':>7} {'tok/s':>7} {'p10':>6} {'p90':>6} {'roofline tok/s':>15} {'% of roofline':>14}"
          + "".join(f" {'sweep ' + str(i) + ' tok/s':>14}" for i in range(2, len(runs) + 1)) + ("  drift" if len(runs) > 1 else ""))
    for r in first:
        later = [next(x for x in recs if x.technique == r.technique).decode_tokens_per_s_median for _, recs in runs[1:]]
        drift = max((abs(v - r.decode_tokens_per_s_median) / r.decode_tokens_per_s_median * 100 for v in later), default=None)
        print(f"{r.technique:10} {r.size_mb:7.1f} {r.decode_tokens_per_s_median:7.2f} {r.decode_tokens_per_s_p10:6.2f} "
              f"{r.decode_tokens_per_s_p90:6.2f} {r.roofline_tokens_per_s:15.2f} {r.roofline_pct:13.1f}%"
              + "".join(f" {v:14.2f}" for v in later) + (f"  {drift:4.1f}%" if drift is not None else ""))


if __name__ == "__main__":
    main()
