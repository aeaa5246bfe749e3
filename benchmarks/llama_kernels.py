"""Two llama.cpp builds, paired, on the lab's own GGUF files: prompt processing and decode speed from llama-bench.

Used to check the CPU-keyed build (core/runtimes/llamacpp_build.py) against the build it replaced, which turned
AVX-512 off everywhere. The runs alternate A, B, A, B... so a VM's drift hits both sides alike; each run is
llama-bench's own mean over `--repetitions`; the table shows the median of the rounds and the ratio B / A.

    python benchmarks/llama_kernels.py --a /tmp/avx2-tools --b lab     # 'lab': this CPU's build from the cache

Prints the machine's fingerprint, both builds' system info and one line per (file, test).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.measure import benchmark  # noqa: E402
from core.paths import data_dir  # noqa: E402
from core.runtimes import llamacpp_build  # noqa: E402


def tools(arg: str) -> Path:
    return llamacpp_build.tool("llama-bench").parent if arg == "lab" else Path(arg)


def lab_files(quants: list[str]) -> list[Path]:
    found = {p.stem: p for p in sorted((data_dir() / "gguf").glob("*/*.gguf"))}
    missing = [q for q in quants if q not in found]
    if missing:
        sys.exit(f"no lab GGUF file for {missing} under {data_dir() / 'gguf'}: run `python -m core sweep "
                 f"--techniques {','.join('gguf-' + q for q in missing)}` first")
    return [found[q] for q in quants]


def bench(folder: Path, model: Path, prompt: int, gen: int, threads: int, reps: int) -> dict[str, float]:
    out = subprocess.run([str(folder / "llama-bench"), "-m", str(model), "-p", str(prompt), "-n", str(gen),
                          "-t", str(threads), "-r", str(reps), "-o", "json"], capture_output=True, text=True,
                         check=True)
    rows = json.loads(out.stdout)
    return {("prompt" if r["n_prompt"] else "decode"): float(r["avg_ts"]) for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="folder with llama-bench of the baseline build, or 'lab'")
    ap.add_argument("--b", default="lab", help="folder with llama-bench of the build to compare, or 'lab'")
    ap.add_argument("--quants", default="f32,q8_0,q4_k_m,q2_k")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    builds = {"A": tools(a.a), "B": tools(a.b)}
    print(f"machine: {benchmark.hardware_fingerprint('cpu')}")
    for name, folder in builds.items():
        info = subprocess.run([str(folder / "llama-bench"), "--help"], capture_output=True, text=True)
        print(f"{name}: {folder} ({'ok' if info.returncode == 0 else 'does not run'})")
    rounds: dict[tuple[str, str, str], list[float]] = {}
    for model in lab_files(a.quants.split(",")):
        for _ in range(a.rounds):
            for name, folder in builds.items():  # A then B, every round
                for test, tps in bench(folder, model, a.prompt_tokens, a.new_tokens, a.threads,
                                       a.repetitions).items():
                    rounds.setdefault((model.stem, test, name), []).append(tps)
    print(f"\nllama-bench -p {a.prompt_tokens} -n {a.new_tokens} -t {a.threads} -r {a.repetitions}, "
          f"{a.rounds} alternating rounds; median tok/s")
    print(f"{'file':<8} {'test':<7} {'A tok/s':>9} {'B tok/s':>9} {'B / A':>7}")
    for model in a.quants.split(","):
        for test in ("prompt", "decode"):
            x, y = (statistics.median(rounds[(model, test, n)]) for n in ("A", "B"))
            print(f"{model:<8} {test:<7} {x:>9.1f} {y:>9.1f} {y / x:>7.2f}")


if __name__ == "__main__":
    main()
