"""The same sweep measured through the dashboard's worker and from the CLI, alternately: does the worker measure
what the CLI measures? No web server and no browser, so it runs on any machine, a GPU one included.

    flock /tmp/lab-heavy.lock .venv/bin/python benchmarks/worker_vs_cli.py --techniques fp32,bf16,nf4 --rounds 3
    python3 benchmarks/worker_vs_cli.py --model /path/to/model --device cuda --techniques fp32,bf16,fp16,nf4

Each round measures every variant twice, in a rotating order: once with `python -m core sweep` (a fresh process,
as a user runs it) and once as a queued dashboard job run by `python -m core worker`, which is how the Measure
button's sweep is measured. Both write into a throwaway data folder. Prints decode tokens/s and the worker's over
the CLI's of each round; asserts nothing.
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

WAYS = ("cli", "worker")


def settings_args(args) -> dict:
    return {"repeats": args.repeats, "mc_max_items": args.mc_max_items, "device": args.device}


def cli_once(args, env: dict, key: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "core", "sweep", "--model", args.model, "--techniques", key, "--repeats",
           str(args.repeats), "--mc-max-items", str(args.mc_max_items), "--device", args.device, "--no-store",
           "--json", str(out)]
    run(cmd, env)
    return json.loads(out.read_text())[0]


class Failed(Exception):
    """One measurement could not be made; the others go on."""


def run(cmd: list[str], env: dict) -> None:
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise Failed(f"{' '.join(cmd[1:4])} exited {done.returncode}: {done.stderr.strip()[-800:]}")


def worker_once(args, env: dict, key: str) -> dict:
    """Queue the sweep as the presenter's Measure button does, and let a worker run it."""
    from core.experiments.sweep import SweepSettings
    from core.launch.jobqueue import PRESENTER, JobQueue
    from core.launch.kinds import SweepArgs
    from core.store import ResultStore

    queue, store = JobQueue(), ResultStore()  # of the throwaway folder: main() pointed LAB_DATA_DIR there
    before = {r.record_id for r in store.all()}
    spec = SweepArgs(args.model, (key,), SweepSettings(**settings_args(args) | {"launched_from": "dashboard"}))
    job = queue.submit("sweep", spec.to_json(), f"{key} (worker_vs_cli)", f"bench|{key}", PRESENTER, "bench")
    run([sys.executable, "-m", "core.launch.worker", "--until-idle"], env)
    ended = queue.job(job)
    if ended.state != "done":
        raise Failed(f"the worker's job ended {ended.state}: {ended.error}")
    new = [r for r in store.all() if r.record_id not in before]
    return new[0].to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--techniques", default="fp32,bf16,nf4")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--mc-max-items", type=int, default=30)
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()
    keys = [k.strip() for k in args.techniques.split(",") if k.strip()]
    data = Path(tempfile.mkdtemp(prefix="worker-vs-cli-"))
    env = os.environ | {"LAB_DATA_DIR": str(data), "LAB_WORKER_AUTOSTART": "0"}
    os.environ.update(env)  # this process reads the same queue and store as the processes it starts
    if not Path(args.model).is_dir():  # a bundled model: dequantized into the throwaway folder once, untimed
        subprocess.run([sys.executable, "-m", "core", "prepare", "--model", args.model], cwd=ROOT, env=env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    measured = []
    for rnd in range(args.rounds):
        for v, key in enumerate(keys):
            for way in (WAYS if (rnd + v) % 2 == 0 else WAYS[::-1]):
                try:
                    record = (cli_once(args, env, key, data / f"cli-{rnd}-{key}.json") if way == "cli"
                              else worker_once(args, env, key))
                except Failed as e:
                    print(f"round {rnd} {key:8s} {way:6s} failed: {e}", flush=True)
                    continue
                tps = record["decode_tokens_per_s_median"]
                measured.append({"round": rnd, "technique": key, "way": way, "decode_tokens_per_s": tps,
                                 "device": record["device"], "hardware": record["hardware"]})
                print(f"round {rnd} {key:8s} {way:6s} {tps:8.2f} tok/s  ({record['device']})", flush=True)
                write(args.json, measured, summarize(keys, measured))  # a run stopped early keeps what it measured
    for key, s in summarize(keys, measured).items():
        print(f"{key:8s} worker / CLI by round {s['worker_over_cli_by_round']}  median {s['worker_over_cli_median']}")


def summarize(keys: list[str], measured: list[dict]) -> dict:
    """The worker's decode tokens/s over the CLI's, for each round that has both."""
    summary = {}
    for key in keys:
        by = {(m["round"], m["way"]): m["decode_tokens_per_s"] for m in measured if m["technique"] == key}
        rounds = sorted({r for r, _ in by if (r, "cli") in by and (r, "worker") in by})
        ratios = [by[(r, "worker")] / by[(r, "cli")] for r in rounds]
        summary[key] = {"worker_over_cli_by_round": [round(x, 3) for x in ratios],
                        "worker_over_cli_median": round(statistics.median(ratios), 3) if ratios else None}
    return summary


def write(path: Path | None, measured: list[dict], summary: dict) -> None:
    if path is not None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"measurements": measured, "summary": summary}, indent=2))
        tmp.replace(path)


if __name__ == "__main__":
    main()
