"""Cascades in words and choices: which point of a measured cascade curve to deploy for a narrow task, and why.

A point is the first stage alone, the second stage alone, or the cascade at one threshold (core/hybrids/curve.py).
The choice is the cheapest point whose accuracy clears the user's minimum and whose cost per 1,000 requests is
within the user's budget; ties go to the more accurate point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from core.hybrids import curve
from core.hybrids.curve import CascadePoint
from core.views.axes import readable_axes, wrap_title


@dataclass(frozen=True)
class CascadeChoice:
    chosen: CascadePoint | None
    min_accuracy: float
    max_usd_per_1k: float | None
    first: CascadePoint
    second: CascadePoint
    qualifying: int  # points that meet both limits


def _acc(p: CascadePoint) -> str:
    return f"{p.accuracy:.1%} (95%: {p.accuracy_low:.1%} to {p.accuracy_high:.1%})"


def _usd(x: float) -> str:
    return f"${x:.4f}" if x >= 0.01 else f"${x:.6f}"


def check_limits(min_accuracy: float, max_usd_per_1k: float | None) -> None:
    if not (isinstance(min_accuracy, (int, float)) and 0 <= min_accuracy <= 1):
        raise ValueError(f"The minimum accuracy must be a share between 0 and 1, got {min_accuracy!r}.")
    if max_usd_per_1k is not None and not (math.isfinite(max_usd_per_1k) and max_usd_per_1k >= 0):
        raise ValueError(f"The budget per 1,000 requests must be a number of dollars >= 0, got {max_usd_per_1k!r}.")


def choose(points: Sequence[CascadePoint], min_accuracy: float, max_usd_per_1k: float | None = None) -> CascadeChoice:
    check_limits(min_accuracy, max_usd_per_1k)
    first, second = curve.ends(points)
    ok = [p for p in points if p.accuracy >= min_accuracy - 1e-12
          and (max_usd_per_1k is None or p.usd_per_1k_requests <= max_usd_per_1k)]
    chosen = min(ok, key=lambda p: (p.usd_per_1k_requests, -p.accuracy)) if ok else None
    return CascadeChoice(chosen, min_accuracy, max_usd_per_1k, first, second, len(ok))


def stage_names(result: dict) -> dict[str, str]:
    return {"first alone": f"{result['first']} alone", "second alone": f"{result['second']} alone",
            "cascade": f"{result['first']} first, {result['second']} when unsure"}


def verdict(choice: CascadeChoice, result: dict) -> str:
    if choice.chosen is None:
        return "Nothing meets both limits."
    p, names = choice.chosen, stage_names(result)
    if p.role == "cascade":
        return f"Deploy the cascade: {names['cascade']}, escalating below a confidence of {p.threshold:.2f}."
    return f"Deploy {names[p.role]}."


def explain(choice: CascadeChoice, result: dict) -> str:
    """The reason with its numbers, against both ends."""
    names, first, second = stage_names(result), choice.first, choice.second
    ends = (f"{names['first alone']}: {_acc(first)}, {_usd(first.usd_per_1k_requests)} per 1,000 requests; "
            f"{names['second alone']}: {_acc(second)}, {_usd(second.usd_per_1k_requests)}.")
    budget = f" and at most {_usd(choice.max_usd_per_1k)} per 1,000 requests" if choice.max_usd_per_1k is not None else ""
    asked = f"You asked for at least {choice.min_accuracy:.1%} accuracy{budget}."
    p = choice.chosen
    if p is None:
        best = max((first, second), key=lambda q: q.accuracy)
        return (f"{asked} No point of the measured curve meets both; the most accurate end is {names[best.role]} at "
                f"{_acc(best)}. {ends}")
    saving = 1 - p.usd_per_1k_requests / second.usd_per_1k_requests if second.usd_per_1k_requests > 0 else math.nan
    what = (f"It sends {p.share_escalated:.0%} of requests to {result['second']} and answers the rest with "
            f"{result['first']}: accuracy {_acc(p)}, {p.mean_latency_ms:,.0f} ms per request on average, "
            f"{_usd(p.usd_per_1k_requests)} per 1,000 requests")
    if p.role != "cascade":
        what = f"{names[p.role]}: accuracy {_acc(p)}, {p.mean_latency_ms:,.0f} ms per request, " \
               f"{_usd(p.usd_per_1k_requests)} per 1,000 requests"
    cheaper = (f", {saving:.0%} less than {names['second alone']}" if p.role != "second alone" and saving > 0 else "")
    overlap = (" Its accuracy interval overlaps the second stage's, so the difference in accuracy is within what "
               "this test set can tell apart." if p.role == "cascade" and p.accuracy_high >= second.accuracy_low
               and p.accuracy < second.accuracy else "")
    return (f"{asked} It is the cheapest of the {choice.qualifying} measured point"
            f"{'s' if choice.qualifying != 1 else ''} that meet both. {what}{cheaper}.{overlap} {ends}")


def one_sentence(result: dict) -> str:
    """What the cascade routes, and when it pays, from its own measured curve."""
    points = [CascadePoint(**p) for p in result["points"]]
    _, second = curve.ends(points)
    best = curve.best_point(points)
    route = (f"{result['first']} answers every {result['task']} request; those it is unsure of "
             f"({result['confidence']}) go to {result['second']}.")
    if best is None:
        return (f"{route} No threshold keeps accuracy within {curve.MAX_ACCURACY_DROP_POINTS:g} point of "
                f"{result['second']} alone ({second.accuracy:.1%}), so here it pays only if you accept less accuracy.")
    saving = 1 - best.usd_per_1k_requests / second.usd_per_1k_requests if second.usd_per_1k_requests else math.nan
    return (f"{route} At a threshold of {best.threshold:.2f} it sends {best.share_escalated:.0%} of requests on, "
            f"keeps accuracy at {best.accuracy:.1%} ({result['second']} alone: {second.accuracy:.1%}) and costs "
            f"{saving:.0%} less than {result['second']} alone.")


# --- the curve as a figure -------------------------------------------------------------------------

def _hover(p: CascadePoint, names: dict[str, str]) -> str:
    head = names[p.role] if p.role != "cascade" else f"threshold {p.threshold:.2f}"
    return (f"{head}<br>accuracy {_acc(p)}<br>sent to the second stage: {p.share_escalated:.0%}<br>"
            f"{p.mean_latency_ms:,.0f} ms per request<br>{_usd(p.usd_per_1k_requests)} per 1,000 requests")


def figure(result: dict, points: Sequence[CascadePoint], chosen: CascadePoint | None = None) -> go.Figure:
    """Task accuracy (with 95% intervals) against $ per 1,000 requests; the two ends as their own markers."""
    names = stage_names(result)
    fig = go.Figure()
    path = sorted((p for p in points if p.role == "cascade"), key=lambda p: p.threshold)
    groups = [("cascade", path, "circle", "#4C78A8"), ("first alone", [curve.ends(points)[0]], "square", "#54A24B"),
              ("second alone", [curve.ends(points)[1]], "diamond", "#E45756")]
    for role, group, symbol, color in groups:
        fig.add_trace(go.Scatter(
            x=[p.usd_per_1k_requests for p in group], y=[p.accuracy * 100 for p in group],
            mode="lines+markers" if role == "cascade" else "markers", name=names[role],
            marker={"symbol": symbol, "size": 8 if role == "cascade" else 13, "color": color},
            error_y={"type": "data", "symmetric": False, "array": [(p.accuracy_high - p.accuracy) * 100 for p in group],
                     "arrayminus": [(p.accuracy - p.accuracy_low) * 100 for p in group], "thickness": 1},
            hovertext=[_hover(p, names) for p in group], hoverinfo="text"))
    if chosen is not None:
        fig.add_trace(go.Scatter(x=[chosen.usd_per_1k_requests], y=[chosen.accuracy * 100], mode="markers",
                                 name="chosen", marker={"size": 20, "color": "rgba(0,0,0,0)",
                                                        "line": {"width": 2, "color": "#333"}}, hoverinfo="skip"))
    fig.update_layout(
        xaxis_title=wrap_title(f"$ per 1,000 requests at ${result['usd_per_hour']:.4f}/hour"),
        yaxis_title=wrap_title(f"{result['task']} accuracy, % (task accuracy, not KLD)"),
        legend={"orientation": "h", "y": -0.25}, margin={"t": 30})
    return readable_axes(fig)


# --- the stored results a page lists ---------------------------------------------------------------

def on_machine(results: Sequence[dict], hardware: str) -> list[dict]:
    """Stored cascade results measured on `hardware`, newest first (speeds from other machines never mix in)."""
    return [r for r in results if r.get("hardware") == hardware]


def result_label(result: dict) -> str:
    when = result.get("created_at", "")[:16].replace("T", " ")
    return f"{result['task']}: {result['first']} → {result['second']} ({result['n_items']} items, {when})"


def point_rows(points: Sequence[CascadePoint], result: dict) -> list[dict]:
    names = stage_names(result)
    return [{"point": names[p.role] if p.role != "cascade" else f"threshold {p.threshold:.2f}",
             "sent to the second stage": p.share_escalated, "accuracy": p.accuracy,
             "95% interval": f"{p.accuracy_low:.1%} to {p.accuracy_high:.1%}", "ms per request": p.mean_latency_ms,
             "$ per 1,000 requests": p.usd_per_1k_requests} for p in points]
