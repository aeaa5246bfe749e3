"""Time each step of the lesson path (core/launch/lesson.py) here, inline, in class order, on a fresh data folder
with the bundled model already prepared: what the Overview's quick settings cost on this machine.

    LAB_DATA_DIR=/tmp/lesson-data .venv/bin/python benchmarks/lesson_times.py [STEP ...]   (default: every step)
"""

from __future__ import annotations

import json
import sys
import time

from core import models
from core.experiments import speculative
from core.launch import lesson
from core.launch.job import Job
from core.launch.launch import launch
from core.measure import cost
from core.models.saved import saved_students
from core.store import open_store


def main() -> None:
    spec = models.BUNDLED[models.DEFAULT_MODEL]
    preset = cost.HARDWARE_PRESETS["laptop-cpu"]
    models.prepare(spec)
    store = open_store()
    times = {}
    for key in sys.argv[1:] or lesson.STEPS:
        students = lesson.students_of(saved_students(), spec.key)
        step = {s.key: s for s in lesson.lesson_steps(spec.key, preset.key, preset.usd_per_hour, students)}[key]
        if step.args is None:
            continue
        t0 = time.perf_counter()
        last = [0.0]

        def report(f: float, m: str) -> None:
            if time.perf_counter() - last[0] > 10:
                last[0] = time.perf_counter()
                print(f"  {key} {time.perf_counter() - t0:6.0f} s  {f:4.0%}  {m}", file=sys.stderr, flush=True)

        launch(Job(step.args, step.label), "inline", store=store, report=report)
        times[key] = round(time.perf_counter() - t0, 1)
        print(f"{key}: {times[key]} s", flush=True)
    records = store.all(model=spec.key)
    hardware = records[0].hardware if records else ""
    print("done:", sorted(lesson.done_steps(records, speculative.saved_results(), spec.key, hardware)))
    print(json.dumps(times))


if __name__ == "__main__":
    main()
