"""Benchmark: the Arena's live tokens/s in a real browser against the sweep's median for the same variants.

    .venv/bin/python -m core sweep --techniques fp32,bf16,dyn-int8      # the baseline, in the results store
    .venv/bin/python benchmarks/arena_bench.py [--runs 3] [--schedule "one after another"]

Starts the dashboard on the user's results store, opens the Arena in Debian's Chromium, presses Generate
with the default variants and prompt, and prints live / sweep for each variant. While the models decode
the script only sleeps: Playwright's waits poll the page on every frame, and on a 2-core machine that CPU
would be taken from the very decoding being timed. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import models  # noqa: E402
from core.measure import benchmark
from core.store import ResultStore  # noqa: E402

HEADER = re.compile(r"^(.+?)\s*\nTTFT (\d+) ms · decode ([\d.]+) tok/s · (\d+) tokens", re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ui.server", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("the dashboard did not start within 60 s")


def one_run(browser, url: str, schedule: str, hands_off_s: float) -> dict[str, tuple[float, float]]:
    """{label: (live TTFT ms, live decode tok/s)} for one press of Generate on a freshly opened Arena."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/arena")
    page.get_by_role("heading", name="Arena").first.wait_for(timeout=60_000)
    page.wait_for_load_state("networkidle")
    page.get_by_text(schedule, exact=True).click()
    page.wait_for_timeout(1000)
    page.get_by_role("button", name="Generate").click()
    time.sleep(hands_off_s)  # hands off while the models decode (see the module docstring)
    page.get_by_text("Live speed against the sweep's median").wait_for(timeout=300_000)
    page.wait_for_timeout(1000)
    found = {m[0].strip().lstrip("#").strip(): (float(m[1]), float(m[2])) for m in HEADER.findall(page.inner_text("body"))}
    page.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--schedule", default="one after another", choices=["one after another", "round-robin"])
    parser.add_argument("--hands-off-s", type=float, default=30.0, help="seconds to leave the page alone after Generate")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    spec = models.resolve(models.DEFAULT_MODEL)
    sweep = {r.label: r for r in ResultStore().latest_per_technique(spec.key, benchmark.hardware_fingerprint("cpu"))}
    port = free_port()
    proc = start_dashboard(port)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            for run in range(1, args.runs + 1):
                for label, (ttft, tps) in one_run(browser, f"http://127.0.0.1:{port}", args.schedule, args.hands_off_s).items():
                    record = sweep.get(label)
                    if record is None:
                        print(f"run {run}  {label:24s} live {tps:5.1f} tok/s   (no sweep of it on this machine)")
                        continue
                    base = record.decode_tokens_per_s_median
                    print(f"run {run}  {label:24s} live {tps:5.1f} tok/s, TTFT {ttft:4.0f} ms | sweep median {base:5.1f} "
                          f"(p10 {record.decode_tokens_per_s_p10:.1f}, p90 {record.decode_tokens_per_s_p90:.1f}), "
                          f"run {record.run_id} | live / sweep {tps / base:.2f}", flush=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
