"""`python -m core task`: every chosen variant answers your task file (JSONL or CSV), each answer checked: pass rates
with 95% intervals, the answers that flipped against the reference, the paired test in words, time and $ per 1,000
answers. Stored in data/tasks/task_runs.jsonl, where the dashboard's "Your task" page, the map and Decide read it.
"""

from __future__ import annotations

import argparse

from core import models
from core.cli.common import existing_file, json_folder, say, write_json
from core.experiments import task_run
from core.launch.job import Job
from core.launch.kinds import TaskArgs
from core.launch.launch import launch
from core.measure import cost
from core.views import task as task_view


def cmd_task(args: argparse.Namespace) -> None:
    settings = task_run.TaskSettings(
        techniques=tuple(t.strip() for t in args.techniques.split(",") if t.strip()),
        task_file=existing_file("--task", args.task) or str(task_run.EXAMPLE_TASK), new_tokens=args.new_tokens,
        threads=args.threads)
    json_folder(args.json)
    usd_per_hour = args.usd_per_hour if args.usd_per_hour is not None else cost.get_preset(args.hardware).usd_per_hour
    result = launch(Job(TaskArgs(args.model, settings)), "inline", report=say).result.to_dict()
    print(f"Task {result['task_name']} ({len(result['prompts'])} prompts, sha256 {result['task_sha256'][:12]}), "
          f"reference {result['reference']}, priced at ${usd_per_hour:.4f}/hour:")
    print(f"{'variant':<28}{'passed':>8}{'pass rate (95% CI)':>22}{'R->W':>6}{'W->R':>6}{'s/answer':>10}"
          f"{'$/1k answers':>14}")
    for row in task_view.score_rows(result, usd_per_hour):
        ci = f"{row['pass rate']:.0%} ({row['95% low']:.0%}-{row['95% high']:.0%})"
        flipped = f"{row['right → wrong']:>6}{row['wrong → right']:>6}"
        print(f"{row['variant'][:27]:<28}{row['passed']:>8}{ci:>22}{flipped}{row['s per answer']:>10.2f}"
              f"{row['$ per 1,000 answers']:>14.4f}")
    print(task_view.interval_note(result))
    for verdict in task_view.verdicts(result):
        print(f"- {verdict.sentence()}.")
    for key in task_view.variant_keys(result):
        for row in (task_view.flip_rows(result, key) if key != result["reference"] else []):
            answers = [v for h, v in row.items() if h.endswith(" says")]
            print(f"  {key} {row['flip']} on {row['prompt']}: {answers[0]!r} -> {answers[1]!r}")
    if args.json:
        write_json(args.json, result)


def add_parsers(sub) -> None:
    """Registers `task` on `sub` (argparse's subparsers)."""
    t = sub.add_parser("task", help="your own task judged: every variant answers a task file (JSONL or CSV, prompts "
                       "with checks), pass rates with intervals, flipped answers, a paired test")
    t.add_argument("--model", default=models.DEFAULT_MODEL)
    t.add_argument("--task", help="the task file (.jsonl or .csv); default: the bundled support-desk example, "
                   f"{task_run.EXAMPLE_TASK.name}")
    t.add_argument("--techniques", default=",".join(task_run.TaskSettings.techniques),
                   help="comma-separated variants; the reference (fp32) is compared with every other")
    t.add_argument("--new-tokens", type=int, default=task_run.TaskSettings.new_tokens,
                   help="at most, per answer (every variant also stops at its end-of-turn token)")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--hardware", default="laptop-cpu", choices=list(cost.HARDWARE_PRESETS),
                   help="price preset for $ per 1,000 answers")
    t.add_argument("--usd-per-hour", type=float, help="override the preset's price")
    t.add_argument("--json", help="also write the result here as JSON")
    t.set_defaults(func=cmd_task)
