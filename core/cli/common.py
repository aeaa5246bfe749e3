"""What the CLI's command modules share: the one error, checked file flags, JSON written in one rename, lists of whole
numbers, progress lines on stderr, and the --ray address with the one call that runs a job on the cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from core.launch import cluster
from core.launch.job import Job, JobArgs
from core.launch.launch import launch
from core.store import ResultStore


class CliError(Exception):
    """A bad argument: one line on stderr, exit status 2."""


def existing_file(flag: str, value: str | None) -> str | None:
    if value is not None and not Path(value).is_file():
        raise CliError(f"{flag}: no such file: {value}")
    return value


def json_folder(path: str | None) -> None:
    if path and not Path(path).resolve().parent.is_dir():
        raise CliError(f"--json: the folder of {path} does not exist")


def write_json(path: str | None, payload) -> None:
    """To the file in one rename (a crash leaves the old file or the new one), else to stdout."""
    text = json.dumps(payload, indent=2)
    if not path:
        print(text)
        return
    tmp = Path(path + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def int_list(flag: str, text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; one clear message for anything else."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CliError(f"{flag}: expected comma-separated whole numbers such as 1,2,4, got {text!r}") from None
    if not values:
        raise CliError(f"{flag}: no values given")
    if len(set(values)) != len(values):
        raise CliError(f"{flag}: a value is listed twice in {text!r}")
    return values


def say(fraction: float, message: str) -> None:
    """A job's progress report (fraction done, words) as one line on stderr."""
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def every_tenth_step(fraction: float, message: str) -> None:
    """A training job's progress, one line per ten steps (every other message in full)."""
    if "step" not in message or message.split("/")[0].endswith("0"):
        say(fraction, message)


def part(start: float, width: float, show=every_tenth_step):
    """Progress for one phase of a job that has several (train, then measure): its 0..1 shown as start..start+width,
    so no phase says 100% before the last one ends."""
    return lambda fraction, message: show(start + width * fraction, message)


def add_ray_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument("--ray", metavar="ADDRESS", help="run the job as one task on a Ray cluster: auto, ray://head:10001 "
                   "or head:6379 (default: $LAB_RAY_ADDRESS; unset = this machine)")


def ray_address(args: argparse.Namespace) -> str | None:
    """The cluster a command runs on: --ray, else $LAB_RAY_ADDRESS; None: this machine."""
    return getattr(args, "ray", None) or cluster.configured_address()


def show_cluster_progress(p) -> None:
    if p.step in ("prepare", "start", "done", "skipped", "retry", "failed", "cancelled"):
        print(f"[{p.fraction:4.0%}] [{p.node}] {p.message}", file=sys.stderr, flush=True)


def on_ray(args: JobArgs, address: str, store: ResultStore | None, needs_store: bool = True):
    """Run one job on the cluster through launch(), from the same typed arguments the pages build; returns what
    launch gave back."""
    if needs_store and store is None:
        raise CliError("--no-store: a job on the cluster writes straight into the shared store; drop --no-store")
    t0 = time.perf_counter()
    done = launch(Job(args), "ray", store=store, address=address, progress=show_cluster_progress)
    print(f"{args.kind} on the cluster ({done.node}) wall time: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return done
