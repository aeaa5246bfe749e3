"""Fit-my-budget in pictures and words: the searched files against llama.cpp's presets on one size-against-KLD chart,
and one sentence per searched file (how it compares with the preset of its size, and its recipe)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import plotly.graph_objects as go

from core.experiments import budget_search
from core.techniques.gguf.budget import KIND_WORDS
from core.views.axes import readable_axes, wrap_title

_STYLE = {"searched": ("circle", "#4C78A8"), "preset": ("square", "#E45756"), "imatrix": ("diamond", "#F58518")}


def _role(row: dict) -> str:
    return "imatrix" if row["role"] == "preset" and row["key"].endswith("-imatrix") else row["role"]


def figure(result: dict) -> go.Figure:
    """Measured mean KLD (± its uncertainty) against file size: the searched files joined as a frontier, the presets
    as their own markers, and what the search predicted as hollow circles."""
    rows = budget_search.frontier_rows(result)
    fig = go.Figure()
    names = {"searched": "searched files (a type per tensor)", "preset": "llama.cpp presets",
             "imatrix": "preset with importance matrix"}
    for role in ("searched", "preset", "imatrix"):
        group = sorted((r for r in rows if _role(r) == role), key=lambda r: r["size_mb"])
        if not group:
            continue
        symbol, color = _STYLE[role]
        fig.add_trace(go.Scatter(
            x=[r["size_mb"] for r in group], y=[r["kld_mean"] for r in group], name=names[role],
            mode="lines+markers+text" if role == "searched" else "markers+text", text=[r["key"] for r in group],
            textposition="top center", marker={"symbol": symbol, "size": 11, "color": color},
            error_y={"type": "data", "array": [r["kld_mean_uncertainty"] for r in group], "thickness": 1},
            hovertemplate="%{text}<br>%{x:.2f} MB<br>KLD %{y:.4f}<extra></extra>"))
    predicted = [r for r in rows if r["role"] == "searched" and r.get("predicted_kld") is not None]
    if predicted:
        fig.add_trace(go.Scatter(
            x=[r["size_mb"] for r in predicted], y=[r["predicted_kld"] for r in predicted], mode="markers",
            name="predicted by the search (before measuring)",
            marker={"symbol": "circle-open", "size": 12, "color": _STYLE["searched"][1]},
            hovertemplate="predicted %{y:.4f}<extra></extra>"))
    fig.update_layout(xaxis_title=wrap_title("GGUF file size, MB (10^6 bytes)"),
                      yaxis_title=wrap_title(f"mean KL divergence from F32, nats ({result['text']}, lower is better)"),
                      legend={"orientation": "h", "y": -0.25}, margin={"t": 30})
    return readable_axes(fig)


def heat_types(result: dict) -> list[str]:
    """The types the sensitivity map can show, the smallest-per-weight last."""
    per_weight: dict[str, list[float]] = {}
    for r in result.get("sensitivity", []):
        per_weight.setdefault(r["qtype"], []).append(r["bytes"])
    return sorted(per_weight, key=lambda t: -sum(per_weight[t]) / len(per_weight[t]))


def widest_type(result: dict) -> str:
    """The smallest type that the most tensors can take as it is (the map's first view: every kind has cells)."""
    count: dict[str, int] = {}
    for r in result.get("sensitivity", []):
        count[r["qtype"]] = count.get(r["qtype"], 0) + 1
    types = heat_types(result)
    return max(reversed(types), key=lambda t: count[t])  # ties: the smaller type, listed last


def heat_map(result: dict, qtype: str) -> go.Figure:
    """Layers x kinds: the predicted extra KLD (nats) of one tensor alone dropped from Q8_0 to `qtype`, its bytes on
    hover. Cells where the rows cannot take the type are blank (llama.cpp falls back to another type there)."""
    rows = [r for r in result.get("sensitivity", []) if r["qtype"] == qtype and r["layer"] >= 0 and "extra_kld" in r]
    kinds = sorted({r["kind"] for r in rows}, key=lambda k: list(KIND_WORDS).index(k) if k in KIND_WORDS else 99)
    layers = sorted({r["layer"] for r in rows})
    cell = {(r["kind"], r["layer"]): r for r in rows}
    z = [[cell[(k, i)]["extra_kld"] if (k, i) in cell else None for i in layers] for k in kinds]
    hover = [[f"{KIND_WORDS.get(k, k)}, layer {i}: +{cell[(k, i)]['extra_kld']:.5f} nats, "
              f"{cell[(k, i)]['bytes'] / 1e6:.2f} MB" if (k, i) in cell else "" for i in layers] for k in kinds]
    fig = go.Figure(go.Heatmap(z=z, x=layers, y=[KIND_WORDS.get(k, k) for k in kinds], text=hover,
                               hoverinfo="text", colorscale="Reds", colorbar={"title": "nats"}))
    fig.update_layout(xaxis_title="layer", yaxis_title=wrap_title(f"tensor kind, each alone at {qtype.upper()}"),
                      margin={"t": 30})
    return readable_axes(fig)


def outside_blocks(result: dict, qtype: str) -> list[str]:
    """The tensors outside the blocks (the token table) in words, at one type."""
    return [f"{KIND_WORDS.get(r['kind'], r['kind'])} at {qtype.upper()}: +{r['extra_kld']:.4f} nats, "
            f"{r['bytes'] / 1e6:.1f} MB" for r in result.get("sensitivity", [])
            if r["qtype"] == qtype and r["layer"] < 0 and "extra_kld" in r]


def _change(ours: float, theirs: float) -> str:
    if not (theirs > 0 and math.isfinite(ours)):
        return "n/a"
    return f"{(ours / theirs - 1):+.0%}"


def compare_sentence(row: dict, result: dict) -> str:
    """How a searched file stands against the preset closest in size (and the imatrix preset at that size)."""
    near = budget_search.nearest_preset(result, row["size_bytes"])
    head = (f"{row['key']}: {row['size_bytes'] / 1e6:.1f} MB, KLD {row['kld_mean']:.4f} ± "
            f"{row['kld_mean_uncertainty']:.4f} (predicted {row['predicted_kld']:.4f}), decode "
            f"{row['decode_tokens_per_s']:.0f} tok/s.")
    if near is None:
        return head
    better = row["kld_mean"] < near["kld_mean"]
    out = (f"{head} Against {near['key']} ({near['size_bytes'] / 1e6:.1f} MB, KLD {near['kld_mean']:.4f}): "
           f"{'less' if better else 'more'} damage ({_change(row['kld_mean'], near['kld_mean'])} KLD), "
           f"{_change(row['decode_tokens_per_s'], near['decode_tokens_per_s'])} decode speed")
    if row["decode_tokens_per_s"] < 0.95 * near["decode_tokens_per_s"]:
        out += " (the mix decodes slower than the preset on this machine)"
    imatrix = next((r for r in result["rows"] if r["key"] == f"{near['key']}-imatrix"), None)
    if imatrix is not None:
        out += (f"; against {imatrix['key']} (KLD {imatrix['kld_mean']:.4f}): "
                f"{_change(row['kld_mean'], imatrix['kld_mean'])} KLD")
    return out + "."


def searched_rows(result: dict) -> list[dict]:
    return [r for r in result["rows"] if r["role"] == "searched"]


def table_rows(result: dict) -> list[dict]:
    """Every file of the run, for a table."""
    return [{"file": r["key"], "size MB": r["size_bytes"] / 1e6, "KLD": r["kld_mean"],
             "± KLD": r["kld_mean_uncertainty"],
             "predicted KLD": r.get("predicted_kld"), "p99 KLD": r["kld_p99"], "same top token": r["same_top"],
             "decode tok/s": r["decode_tokens_per_s"]} for r in sorted(result["rows"], key=lambda r: r["size_bytes"])]


def calibration_sentence(result: dict) -> str:
    c = result["calibration"]
    return (f"The search's estimate was calibrated on {len(c['groups'])} files, each with one group of tensors "
            f"(a kind in a third of the layers) dropped from Q8_0, measured on the calibration text; on "
            f"{len(c['held_out'])} held-out files it ranked the damage with Spearman {c['spearman']:.2f}, off by "
            f"{c['mean_abs_error']:.4f} nats on average. It assumes the damage of groups adds up.")


def label(result: dict) -> str:
    sizes = ", ".join(f"{r['size_bytes'] / 1e6:.0f}" for r in searched_rows(result))
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(result.get("at", 0)))
    return f"{sizes} MB{' with importance matrix' if result.get('imatrix') else ''} ({when})"


def on_machine(results: Sequence[dict], hardware: str) -> list[dict]:
    return [r for r in results if r.get("provenance", {}).get("hardware") == hardware and searched_rows(r)]
