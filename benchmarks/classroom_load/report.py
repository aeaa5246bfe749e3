"""The result the load test prints (and writes with --json) for the rounds and the paired modes; the file rewritten
whole, so that a run stopped early leaves what it finished; and `--pool`, which reads earlier `--paired --json`
results and reports their rounds together."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from .machine import cpu_name
from .stats import compare, median, median_ci95, paired_summary, pct

if TYPE_CHECKING:
    from .rounds import Round
    from .session import Stats


def rounds_result(args, keys: list[str], rounds: list[Round], cli_runs: list[dict[str, dict]],
                  cli_steal: list[float | None]) -> dict:
    """Pages, errors and the queue over all rounds, and each variant's dashboard speed over the CLI's."""
    page_s = [x for rd in rounds for x in rd.stats.page_s]
    errors = [e for rd in rounds for e in rd.stats.errors]
    result = {
        "app": str(args.app_dir.resolve()), "sessions": args.sessions, "browser_sessions": args.browsers,
        "rounds": len(rounds), "load_s": [round(rd.load_s, 1) for rd in rounds], "page_runs": len(page_s),
        "page_response_s_p50": round(pct(page_s, 0.5), 3), "page_response_s_p90": round(pct(page_s, 0.9), 3),
        "fragment_rerun_s_p90": round(pct([x for rd in rounds for x in rd.stats.fragment_s], 0.9), 3),
        "timeouts": sum(rd.stats.timeouts for rd in rounds), "errors_shown": len(errors),
        "error_samples": sorted(set(errors))[:8],
        "expected_notices_shown": sum(rd.stats.refusals for rd in rounds),
        "viewer_jobs_queued": sum(rd.stats.jobs_queued for rd in rounds), "queue_by_round": [rd.queue for rd in rounds],
        "load_generator_cpu_pct_of_machine": round(100 * sum(rd.load_cpu_s for rd in rounds)
                                                   / (sum(rd.wall_s for rd in rounds) * psutil.cpu_count()), 1),
        "cpu": cpu_name(), "cores": psutil.cpu_count(),
        "variants": compare(keys, rounds, cli_runs),
        "server_logs": [str(rd.log) for rd in rounds],
        "server_tracebacks_by_round": [rd.tracebacks for rd in rounds],
        "hypervisor_steal_pct": {"cli_runs": cli_steal, "rounds": [rd.steal_pct for rd in rounds]},
    }
    ratios = [x for v in result["variants"] for x in v["dashboard_over_cli_by_round"]]
    result["all_variants_by_round_median"] = round(median(ratios), 3) if ratios else None
    result["all_variants_by_round_median_ci95"] = median_ci95(ratios)
    return result


def unfinished_paired_result(args, measured: list[dict], parts: tuple[Stats, Stats, Stats]) -> dict:
    """What a --paired run has measured so far, as --pool reads it; `parts` as in paired_result."""
    stats, pstats, bstats = parts
    page_s = stats.page_s + pstats.page_s + bstats.page_s
    return {"mode": "paired", "finished": False, "cpu": cpu_name(), "sessions": args.sessions,
            "rounds": len({m["round"] for m in measured}), "page_runs": len(page_s),
            "page_response_s_p90": round(pct(page_s, 0.9), 3) if page_s else None,
            "errors_shown": len(stats.errors + pstats.errors + bstats.errors), "measurements": measured}


def paired_result(args, keys: list[str], measured: list[dict], parts: tuple[Stats, Stats, Stats], wall: float,
                  load_cpu: float, log: Path, steal_pct: float | None) -> dict:
    """A finished --paired run: `parts` are the viewers', the presenter's and the browser tabs' Stats; `wall` and
    `load_cpu` the run's seconds and this load generator's CPU seconds."""
    stats, pstats, bstats = parts
    page_s = stats.page_s + pstats.page_s + bstats.page_s
    errors = stats.errors + pstats.errors + bstats.errors
    return {
        "mode": "paired", "finished": True, "app": str(args.app_dir.resolve()), "sessions": args.sessions,
        "rounds": len({m["round"] for m in measured}),  # as the unfinished file counts them
        "presenter_tab": args.presenter_tab, "wall_s": round(wall, 1), "page_runs": len(page_s),
        "page_response_s_p50": round(pct(page_s, 0.5), 3), "page_response_s_p90": round(pct(page_s, 0.9), 3),
        "fragment_rerun_s_p90": round(pct(stats.fragment_s + pstats.fragment_s, 0.9), 3),
        "timeouts": stats.timeouts + pstats.timeouts, "errors_shown": len(errors),
        "error_samples": sorted(set(errors))[:8], "viewer_jobs_queued": stats.jobs_queued,
        "load_generator_cpu_pct_of_machine": round(100 * load_cpu / (wall * psutil.cpu_count()), 1),
        "server_log": str(log), "server_tracebacks": log.read_text(errors="replace").count("Traceback (most recent"),
        "hypervisor_steal_pct": steal_pct, "cpu": cpu_name(), "cores": psutil.cpu_count(),
        "records_not_at_asked_repeats": [(m["round"], m["technique"], m["condition"]) for m in measured if m["record"]
                                         and m["record"]["settings"].get("repeats") != args.repeats],
        **paired_summary(keys, measured), "measurements": measured,
    }


def write_json_atomically(path: Path, obj: dict) -> None:
    """A reader (or --pool) sees the previous whole file or the new whole file, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def pool(paths: list[Path]) -> dict:
    """The rounds of several --paired results as one: each round still pairs the dashboard with the CLI of the same
    minutes; only the medians and intervals are taken over more of them."""
    measured, sources = [], []
    for i, path in enumerate(paths):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"{path}: cannot read it as JSON ({e}); pass files written by --paired --json")
        if result.get("mode") != "paired" or "measurements" not in result:
            raise SystemExit(f"{path}: not a --paired result with its measurements; rerun with --paired --json")
        measured += [m | {"round": (i, m["round"])} for m in result["measurements"]]
        sources.append({"file": str(path), "cpu": result["cpu"], "rounds": result["rounds"],
                        "finished": result.get("finished", True),
                        "page_response_s_p90": result["page_response_s_p90"], "errors_shown": result["errors_shown"]})
    keys = list(dict.fromkeys(m["technique"] for m in measured))
    return {"pooled": sources, "rounds": len({m["round"] for m in measured}), **paired_summary(keys, measured)}
