"""Pure plotly figures for serving at load: records in, go.Figure out (tested without a UI).

The serving frontier puts each user's speed on x and what the machine makes per dollar on y: batching
moves a variant up (more tokens per dollar) and left (each user slower). One curve per variant, one point
per concurrency, the knee marked where more concurrency stops paying.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.colors import qualitative

from core.measure import cost
from core.store.records import ServingRecord
from core.views.axes import log_axis, readable_axes, wrap_title

KNEE_GAIN = 0.15  # past the knee, the next concurrency step adds less than 15% throughput
KNEE_NAME = "knee"


def tokens_per_dollar(throughput_tokens_per_s: float, usd_per_hour: float) -> float:
    if not (usd_per_hour > 0 and math.isfinite(throughput_tokens_per_s)):
        return float("nan")
    return throughput_tokens_per_s * cost.SECONDS_PER_HOUR / usd_per_hour


def curve_key(r: ServingRecord) -> tuple[str, str]:
    return (r.technique, r.runtime)


def knee_index(throughputs: Sequence[float]) -> int:
    """Index of the last point whose step from the one before still added >= KNEE_GAIN throughput.

    Points are in rising concurrency. Past it, more simultaneous users mostly wait longer.
    """
    knee = 0
    for i in range(1, len(throughputs)):
        if throughputs[i - 1] > 0 and throughputs[i] / throughputs[i - 1] - 1 >= KNEE_GAIN:
            knee = i
        else:
            break
    return knee


def frontier_figure(records: Sequence[ServingRecord], prompt_tokens: int) -> go.Figure:
    """Per-user tok/s (x) against output tokens per dollar (y), one curve per variant; error bars span the waves."""
    fig = go.Figure()
    points = [r for r in records if r.prompt_tokens == prompt_tokens]
    curves: dict[tuple[str, str], list[ServingRecord]] = {}
    for r in points:
        curves.setdefault(curve_key(r), []).append(r)
    colours = qualitative.Plotly
    for i, (key, rs) in enumerate(sorted(curves.items())):
        rs = sorted(rs, key=lambda r: r.concurrency)
        y = [tokens_per_dollar(r.throughput_tokens_per_s, r.usd_per_hour) for r in rs]
        lo = [tokens_per_dollar(min(r.throughput_tokens_per_s_samples or [r.throughput_tokens_per_s]), r.usd_per_hour)
              for r in rs]
        hi = [tokens_per_dollar(max(r.throughput_tokens_per_s_samples or [r.throughput_tokens_per_s]), r.usd_per_hour)
              for r in rs]
        name = f"{rs[0].label} · {rs[0].runtime}"
        colour = colours[i % len(colours)]
        fig.add_trace(go.Scatter(
            x=[r.per_user_tokens_per_s_median for r in rs], y=y, mode="lines+markers+text", name=name,
            text=[f"C={r.concurrency}" for r in rs], textposition="top right", line={"color": colour},
            error_y={"type": "data", "symmetric": False, "array": [h - v for h, v in zip(hi, y)],
                     "arrayminus": [v - l for v, l in zip(y, lo)]},
            customdata=[[r.concurrency, r.throughput_tokens_per_s, r.usd_per_1m_tokens, r.ttft_ms_p90] for r in rs],
            hovertemplate=("concurrency %{customdata[0]}<br>%{x:.1f} tok/s per user<br>%{customdata[1]:.1f} tok/s "
                           "in all<br>$%{customdata[2]:.4f} per 1M tokens<br>p90 TTFT %{customdata[3]:.0f} ms"
                           "<extra>" + name + "</extra>")))
        k = knee_index([r.throughput_tokens_per_s for r in rs])
        fig.add_trace(go.Scatter(
            x=[rs[k].per_user_tokens_per_s_median], y=[y[k]], mode="markers", name=f"{KNEE_NAME}: {name}",
            marker={"symbol": "star", "size": 16, "color": colour, "line": {"width": 1, "color": "black"}},
            hovertemplate=f"knee at concurrency {rs[k].concurrency}<extra></extra>", showlegend=False))
    price = points[0].usd_per_hour if points else float("nan")
    fig.update_layout(
        title=(f"Serving frontier, {prompt_tokens}-token prompts"
               "<br><sub>★ knee: more users past it mostly wait longer</sub>"),
        xaxis_title="Each user's speed, tok/s (→ better for users)",
        yaxis_title=wrap_title(f"Output tokens per US$ at ${price:.4f}/h (↑ cheaper)"),
        legend_title="variant · runtime",
        legend={"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0}, height=520)
    return readable_axes(fig)


def context_figure(points: Sequence, label: str = "") -> go.Figure:
    """KV cache MB measured and estimated (left axis) and decode tok/s (right axis) as the context grows."""
    x = [p.context_tokens for p in points]
    speed = [p.decode_tokens_per_s.median for p in points]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[p.kv_cache_mb_measured for p in points], mode="markers", name="KV cache, measured",
                             marker={"size": 11}))
    fig.add_trace(go.Scatter(x=x, y=[p.kv_cache_mb_estimated for p in points], mode="lines",
                             name="KV cache, estimated from the config", line={"dash": "dash"}))
    fig.add_trace(go.Scatter(
        x=x, y=speed, mode="lines+markers", name="decode tok/s", yaxis="y2",
        error_y={"type": "data", "symmetric": False,
                 "array": [max(p.decode_tokens_per_s.samples) - s for p, s in zip(points, speed)],
                 "arrayminus": [s - min(p.decode_tokens_per_s.samples) for p, s in zip(points, speed)]}))
    fig.update_layout(
        title=f"Context length: KV cache and decode speed{' · ' + label if label else ''}",
        xaxis_title="Context, tokens", xaxis_type="log", xaxis=_context_ticks(x),
        yaxis_title="KV cache, MB (one sequence)",
        # ticks of its own ('sync' would put the left axis's grid on it: 5.09, 10.16...), legend under the figure
        yaxis2={"title": "Decode, tok/s", "overlaying": "y", "side": "right", "rangemode": "tozero",
                "tickmode": "auto", "showgrid": False},
        legend={"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0})
    return readable_axes(fig)


def _context_ticks(contexts: Sequence[int]) -> dict:
    """Plain-number ticks (200, 500, 1,000...) on the log context axis, with a little room around the points."""
    positive = [math.log10(c) for c in contexts if c and c > 0]
    if not positive:
        return {}
    span = [min(positive) - 0.1, max(positive) + 0.1]
    return {"range": span, **log_axis(span)}
