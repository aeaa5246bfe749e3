"""How long any job will take on this machine, before its button is pressed, with how sure that is.

Three sources, best first:

1. **Jobs alike, here.** Jobs of the same kind and the same `similar` key (core/launch/kinds/) that ended done on
   this machine (hardware fingerprint): the median of their times, their spread as the range. Two runs of the same
   job on a quiet machine take the same time to within a few percent.
2. **Jobs of the kind, here, of another size.** Scaled by the kind's `size` (steps, variants, prompts...) from the
   nearest-sized one: rough, since fixed costs (loading, measuring the result) do not scale.
3. **A reference machine, scaled to this one.** `assets/estimates/job_times.json` holds each kind's time on the
   machine `python -m benchmarks.job_times` ran on, with that machine's decode and training speeds; this machine's
   speeds are measured once by the worker when it is idle (core/experiments/machine_speed.py). The reference's time
   times the ratio of the speeds the kind is bound by (`JobKind.bound`). Rough, and said so.

Sources 2 and 3 are multiplied by what the last jobs of the kind here took against such estimates (the median of
actual / uncorrected over up to five, kept within ×0.5..×3), as the sweep's own estimate is.

The machine's load matters as much as its speed: an estimate holds for a quiet machine. The worker notes what
other processes use while it waits for work (core/launch/machine_load.py); above BUSY_SHARE the estimate says it is
uncertain and why, instead of a figure that a video call would make several times too low.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from core.experiments import estimate
from core.experiments.estimate import CORRECTION_MAX, CORRECTION_MIN
from core.launch import kinds
from core.launch.job import JobArgs
from core.launch.jobqueue import JobEstimate, JobQueue, QueuedJob
from core.experiments import machine_speed
from core.paths import ASSETS
from core.store.records import VariantRecord

REFERENCE_TIMES = ASSETS / "estimates" / "job_times.json"
LEARN_FROM_LAST = 5
ALIKE_SPREAD = 0.15  # jobs alike here still vary this much on a quiet machine: the range is at least ±15%
ROUGH_SPREAD = 0.5  # a scaled estimate: ±50%, said so
BUSY_SHARE = 0.25  # of all cores: one busy thread on a 2-core laptop is 0.5
LEARN_QUIET_SHARE = 0.10  # a job that ran beside others using this much is not learned from (one at 22% took 1.9x)


@dataclass(frozen=True)
class TimeEstimate:
    seconds: float | None  # None: nothing to go on yet (the words say what will give one)
    low_s: float | None
    high_s: float | None
    basis: str  # where it comes from, in words
    uncorrected_s: float | None = None  # before the correction learned from earlier jobs of the kind here
    busy: str = ""  # why it is uncertain now ("" on a quiet machine)

    def words(self) -> str:
        if self.seconds is None:
            head = f"Estimated time here: not known yet ({self.basis})"
        elif self.high_s is None:  # a time budget: the floor is known, what comes after it is not yet
            head = f"Estimated time here: at least {fmt_s(self.low_s)}, {self.basis}"
        else:
            head = (f"Estimated time here: about {fmt_s(self.seconds)} (likely {fmt_s(self.low_s)} to "
                    f"{fmt_s(self.high_s)}), {self.basis}")
        return head + (f". Uncertain: {self.busy}" if self.busy else "")

    def for_queue(self, hardware: str) -> JobEstimate:
        """What the queue keeps with the job: the figure shown, the one before correction, and the machine (kept
        even with no figure, so that this job's time teaches the next estimate of its kind here)."""
        return JobEstimate(self.seconds, self.uncorrected_s, hardware)


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# ---------------------------------------------------------------- 1 and 2: this machine's own jobs


def quiet_runs(done: list[QueuedJob]) -> list[QueuedJob]:
    """The jobs that ran on a quiet machine (others' share under LEARN_QUIET_SHARE, or not measured): a job slowed by
    a video call would teach every later estimate its slowness. All of them when none was quiet."""
    quiet = [j for j in done if j.others_share is None or j.others_share < LEARN_QUIET_SHARE]
    return quiet or done


def _alike(args: JobArgs, done: list[QueuedJob]) -> TimeEstimate | None:
    similar = kinds.kind_of(args).similar(args)
    times = [j.elapsed_s for j in quiet_runs(done) if j.similar == similar and j.elapsed_s > 0][:LEARN_FROM_LAST]
    if not times:
        return None
    median = statistics.median(times)
    low, high = min(min(times), median * (1 - ALIKE_SPREAD)), max(max(times), median * (1 + ALIKE_SPREAD))
    runs = f"{len(times)} jobs alike" if len(times) > 1 else "1 job alike"
    # no uncorrected figure: the correction learns only how rough estimates (sources 2 and 3) turn out
    return TimeEstimate(median, low, high, f"from {runs} that ended here", None)


def _other_size(args: JobArgs, done: list[QueuedJob]) -> tuple[float, str] | None:
    kind = kinds.kind_of(args)
    size = kind.size(args)
    sized = []
    for job in done:
        try:
            past = kinds.parse(job.kind, job.args)
        except (ValueError, TypeError, KeyError):
            continue  # a job queued by an older version: its arguments no longer parse
        if kind.budget_s(past) <= 0:  # only work counted in steps or variants scales by size, never a time budget
            sized.append((kind.size(past), job))
    sized = [(s, j) for s, j in sized if s > 0 and j.elapsed_s > 0]
    if not sized or size <= 0:
        return None
    ref_size, nearest = min(sized, key=lambda sj: abs(sj[0] - size))
    return nearest.elapsed_s * size / ref_size, f"scaled from a {kind.name} job of another size here"


# ---------------------------------------------------------------- 3: the reference machine


def reference_table(path: Path = REFERENCE_TIMES) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _from_reference(args: JobArgs, speed: machine_speed.MachineSpeed | None, table: dict) -> tuple[float, str] | None:
    kind = kinds.kind_of(args)
    ref_machine, jobs = table.get("machine") or {}, [j for j in table.get("jobs", []) if j.get("kind") == kind.name]
    if speed is None or not jobs or not ref_machine:
        return None
    ref_rate = ref_machine.get("train_tokens_per_s" if kind.bound == "train" else "decode_tokens_per_s")
    if not ref_rate:
        return None
    ratio = ref_rate / speed.rate(kind.bound)  # > 1: this machine is slower than the reference
    similar, size = kind.similar(args), kind.size(args)
    same = [j for j in jobs if j["similar"] == similar]
    if same:
        return same[0]["seconds"] * ratio, f"scaled from the reference machine's time by this machine's {kind.bound} speed"
    nearest = min(jobs, key=lambda j: abs(j["size"] - size))
    if nearest["size"] <= 0:
        return None
    return (nearest["seconds"] * size / nearest["size"] * ratio,
            f"scaled from the reference machine's {kind.name} job of another size by this machine's {kind.bound} speed")


# ---------------------------------------------------------------- the learned correction


def correction(done: list[QueuedJob]) -> tuple[float, int]:
    """(factor, jobs it learned from): median actual / uncorrected over the last jobs of the kind here."""
    ratios = [j.elapsed_s / j.uncorrected_s for j in done if j.uncorrected_s and j.elapsed_s > 0][:LEARN_FROM_LAST]
    if not ratios:
        return 1.0, 0
    return min(CORRECTION_MAX, max(CORRECTION_MIN, statistics.median(ratios))), len(ratios)


def _rough(seconds: float, basis: str, done: list[QueuedJob]) -> TimeEstimate:
    factor, runs = correction(done)
    if runs:
        basis += f", corrected ×{factor:.2g} by the last {runs} such job(s) here"
    corrected = seconds * factor
    return TimeEstimate(corrected, corrected * (1 - ROUGH_SPREAD), corrected * (1 + ROUGH_SPREAD), basis, seconds)


# ---------------------------------------------------------------- the estimate


def busy_words(share: float | None) -> str:
    if share is None or share < BUSY_SHARE:
        return ""
    return (f"other programs are using {100 * share:.0f}% of this machine's CPU right now, so this job may take "
            "several times longer than estimated (and its timings will be marked as taken on a busy machine)")


def estimate_job(args: JobArgs, queue: JobQueue, hardware: str,
                 speed: machine_speed.MachineSpeed | None = None, table: dict | None = None,
                 others_share: float | None = None) -> TimeEstimate:
    """The estimate for `args` on `hardware`: from jobs alike here, else of another size here, else the reference
    machine scaled by this one's measured speed; with why it is uncertain when others use `others_share` of the
    machine now (core/launch/machine_load.recent_share)."""
    kind = kinds.kind_of(args)
    done = quiet_runs(queue.finished_here(kind.name, hardware))
    busy = busy_words(others_share)
    found = _alike(args, done)
    if found is not None:
        return TimeEstimate(found.seconds, found.low_s, found.high_s, found.basis, found.uncorrected_s, busy)
    if (budget := kind.budget_s(args)) > 0:
        return TimeEstimate(budget, budget, None, "the training budget you set, then measuring what it made (no job "
                            "alike has ended here yet to say how long that takes)", None, busy)
    scaled = _other_size(args, done) or _from_reference(args, speed or machine_speed.saved(hardware),
                                                         reference_table() if table is None else table)
    if scaled is not None:
        rough = _rough(*scaled, done)
        return TimeEstimate(rough.seconds, rough.low_s, rough.high_s, rough.basis, rough.uncorrected_s, busy)
    why = ("this machine's speed is being measured in the background; the estimate appears when that is done"
           if speed is None and machine_speed.saved(hardware) is None else f"no {kind.name} job has run here yet")
    return TimeEstimate(None, None, None, why, None, busy)


def sweep_reference(hardware: str, table: dict | None = None) -> estimate.Reference | None:
    """The reference machine's full-sweep records, with how much slower this machine decodes: a rough estimate for
    a variant never measured here (None until this machine's speed is measured, or with no table)."""
    table = reference_table() if table is None else table
    speed, machine = machine_speed.saved(hardware), table.get("machine") or {}
    if speed is None or not machine.get("decode_tokens_per_s") or not table.get("variants"):
        return None
    records = {}
    for key, record in table["variants"].items():
        try:
            records[key] = VariantRecord.from_dict(record)
        except (TypeError, ValueError, KeyError):
            continue  # written by an older version: leave it out
    return estimate.Reference(records, machine["decode_tokens_per_s"] / speed.decode_tokens_per_s,
                              machine.get("cpu", "another machine"))
