"""The numbers the load test reports: medians, percentiles and their intervals, and each dashboard speed over the
CLI's (pooled over rounds, or paired within a round)."""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING

from core.measure import intervals

if TYPE_CHECKING:
    from .rounds import Round

# What core/launch/quiet.py (pages) and the timing primitive (other processes, core/measure/others.py) wrote in each
# record.
GATE_FIELDS = ("timed_runs_with_pages_paused", "timed_runs_with_pages_running", "page_turns_between_decode_steps",
               "timed_runs_disturbed", "timed_runs_disturbed_and_repeated", "other_processes_cpu_pct_median",
               "other_processes_cpu_pct_max", "busy_machine", "page_drain_wait_ms_max")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def median_ci95(values: list[float], resamples: int = 4000) -> list[float] | None:
    """The median's 95% percentile-bootstrap interval, core's (seeded, so a rerun on the same numbers prints the same),
    rounded as reported; None for fewer than 3 values. With this machine's drift, the interval over rounds is what
    says whether "within 5%" is shown or not."""
    if len(values) < 3:
        return None
    estimate = intervals.median_of(values, seed=0, draws=resamples)
    if not (math.isfinite(estimate.low) and math.isfinite(estimate.high)):
        return None  # fewer than 2 usable values (core drops any that are not a finite positive number)
    return [round(estimate.low, 3), round(estimate.high, 3)]


def compare(keys: list[str], rounds: list[Round], cli_runs: list[dict[str, dict]]) -> list[dict]:
    """Each variant's dashboard decode median against the CLI's, pooled over all rounds.

    The CLI runs before the first round, between rounds and after the last, so its samples and the dashboard's
    are centred on the same moment: this machine's speed drifted by up to 35% within minutes (one CLI process
    alone gave 19-28 tok/s for FP32 inside one minute), which a single before-and-after pair cannot cancel.
    Each round's own ratio is against the mean of the two CLI runs around it."""
    out = []
    for k in keys:
        dash = [r for rd in rounds for r in rd.records if r["technique"] == k]
        dash_samples = [x for r in dash for x in r["decode_tokens_per_s_samples"]]
        cli_samples = [x for run in cli_runs if k in run for x in run[k]["decode_tokens_per_s_samples"]]
        per_round = []
        for i, rd in enumerate(rounds):
            mine = [r["decode_tokens_per_s_median"] for r in rd.records if r["technique"] == k]
            around = [cli_runs[j][k]["decode_tokens_per_s_median"] for j in (i, i + 1)
                      if j < len(cli_runs) and k in cli_runs[j]]
            if mine and around:
                per_round.append(round(mine[0] / statistics.mean(around), 3))
        d, c = median(dash_samples), median(cli_samples)
        out.append({
            "technique": k, "dashboard_decode_tok_s": round(d, 2), "cli_decode_tok_s": round(c, 2),
            "dashboard_over_cli": round(d / c, 3) if dash_samples and cli_samples else None,
            "dashboard_over_cli_by_round": per_round,
            "by_round_median": round(median(per_round), 3) if per_round else None,
            "by_round_median_ci95": median_ci95(per_round),
            "sessions_connected": [r["settings"].get("sessions_connected") for r in dash],
            "timed_runs": [{n: r["settings"].get(n) for n in GATE_FIELDS} for r in dash],
            "dashboard_samples": [round(x, 2) for x in dash_samples],
            "cli_samples": [round(x, 2) for x in cli_samples],
            "settings": {n: dash[0]["settings"].get(n) for n in ("threads", "new_tokens", "prompt_tokens", "repeats")}
            if dash else None,
        })
    return out




CONDITIONS = ("cli", "room", "alone")  # the CLI alone; the dashboard with the room active; with only the presenter


def paired_summary(keys: list[str], measured: list[dict]) -> dict:
    """Each dashboard measurement over the CLI measurement of the same variant in the same round."""
    def decode(rnd: int, key: str, condition: str) -> float | None:
        found = [m["record"] for m in measured if (m["round"], m["technique"], m["condition"]) == (rnd, key, condition)
                 and m["record"]]
        return found[0]["decode_tokens_per_s_median"] if found else None

    rounds = sorted({m["round"] for m in measured})
    out, all_ratios = {}, {"room": [], "alone": []}
    for key in keys:
        row = {"cli_decode_tok_s_by_round": [decode(r, key, "cli") for r in rounds]}
        for condition in ("room", "alone"):
            ratios = [round(d / c, 3) for r in rounds
                      if (d := decode(r, key, condition)) and (c := decode(r, key, "cli"))]
            all_ratios[condition] += ratios
            row[f"{condition}_decode_tok_s_by_round"] = [decode(r, key, condition) for r in rounds]
            row[f"{condition}_over_cli_by_round"] = ratios
            row[f"{condition}_over_cli_median"] = round(median(ratios), 3) if ratios else None
            row[f"{condition}_over_cli_median_ci95"] = median_ci95(ratios)
        room = [m["record"] for m in measured if m["technique"] == key and m["condition"] == "room" and m["record"]]
        row["sessions_connected"] = [r["settings"].get("sessions_connected") for r in room]
        row["timed_runs"] = [{n: r["settings"].get(n) for n in GATE_FIELDS} for r in room]
        out[key] = row
    cpu = {c: {part: round(median([m["cpu_pct_of_machine"][part] for m in measured if m["condition"] == c
                                   and m["cpu_pct_of_machine"][part] is not None]), 2)
               for part in measured[0]["cpu_pct_of_machine"]} for c in CONDITIONS} if measured else {}
    return {"variants": out, "cpu_pct_of_machine_median_by_condition": cpu,
            **{f"all_variants_{c}_over_cli_median": round(median(v), 3) if v else None
                                for c, v in all_ratios.items()},
            **{f"all_variants_{c}_over_cli_median_ci95": median_ci95(v) for c, v in all_ratios.items()}}
