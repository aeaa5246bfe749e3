"""Time the lesson's first minute in the browser: from a fresh server and an empty data folder, press Measure on
Quantize and time the first dot on the Trade-off Map, the second, and Stop. It runs the browser test that checks the
same path (tests/test_first_dot_browser.py) `--runs` times, alone, and prints each run's times, their median and the
lesson's targets (the first dot within a minute, Stop within 10 s), with the CPU they ran on.

    .venv/bin/python benchmarks/first_dot.py [--runs 3]

Needs Chromium and the prepared bundled model (`make model`), like the test. Run nothing else heavy beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.measure.cpu import this_cpu  # noqa: E402

TEST = "tests/test_first_dot_browser.py"


def one_run(out_dir: Path) -> dict:
    env = {**os.environ, "LAB_FIRST_DOT_OUT": str(out_dir)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", TEST], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    saved = out_dir / "first_dot.json"
    if done.returncode or not saved.exists():
        raise SystemExit(f"the first-dot test failed (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return json.loads(saved.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="whole runs, each from a fresh server (default 3)")
    runs = parser.parse_args().runs
    cpu = this_cpu()
    print(f"machine: {cpu.model_name} ({cpu.identity}; {', '.join(cpu.speed_features)}), {os.cpu_count()} cores")
    times = []
    for i in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            times.append(one_run(Path(tmp)))
        print(f"run {i + 1}: " + ", ".join(f"{k} {v}" for k, v in times[-1].items() if not k.startswith("target")), flush=True)
    for key, target in (("first_dot_s", "target_first_dot_s"), ("second_dot_s", None), ("stop_s", "target_stop_s")):
        values = [t[key] for t in times]
        aim = f" (target {times[0][target]:.0f} s)" if target else ""
        print(f"{key}: median {statistics.median(values):.1f} s, range {min(values):.1f}-{max(values):.1f} s{aim}")


if __name__ == "__main__":
    main()
