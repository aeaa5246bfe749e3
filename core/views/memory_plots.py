"""Memory at long context and many users: the memory model's curves with the device presets as lines, the table of
its predictions against llama-server's measured peaks, and the "will it fit" sentence (records in, figures and
numbers out; tested without a UI)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.colors import qualitative

from core.measure import fit, memory
from core.serving.memory_bench import CacheQuality, MemoryRun
from core.views.axes import readable_axes

DASHES = {"f16": "solid", "q8_0": "dash", "q4_0": "dot"}


def cache_words(cache_type: str) -> str:
    return cache_type.upper()


def variants(run: MemoryRun) -> dict[str, tuple[str, float]]:
    """technique -> (label, weights MB), in the run's order."""
    out: dict[str, tuple[str, float]] = {}
    for p in run.points:
        out.setdefault(p.technique, (p.label, p.weights_mb))
    return out


def cache_types(run: MemoryRun) -> list[str]:
    return list(dict.fromkeys(p.cache_type for p in run.points))


def need_for(run: MemoryRun, technique: str, cache_type: str, users: int):
    """context -> the memory model's MemoryNeed for this variant, cache type and number of users."""
    _, weights = variants(run)[technique]
    return lambda ctx: memory.predict_llamacpp(weights, run.shape, ctx, users, cache_type, run.calibration)


def contexts_axis(limit_tokens: int) -> list[int]:
    """256, 512, ... up to the trained length: one point per 256-cell block would be thousands, doubling is enough."""
    out, n = [], memory.LLAMA_CELL_BLOCK
    while n < limit_tokens:
        out.append(n)
        n *= 2
    return out + [limit_tokens]


def memory_figure(run: MemoryRun, users: int, devices: Sequence[fit.DevicePreset]) -> go.Figure:
    """Predicted memory (MB, log) against context per user for `users` users, one line per variant and cache type;
    measured peaks at that slot count as markers; each device's usable memory as a horizontal line."""
    fig = go.Figure()
    x = contexts_axis(run.trained_context)
    colours = qualitative.Plotly
    for i, (technique, (label, _)) in enumerate(variants(run).items()):
        for cache in cache_types(run):
            need = need_for(run, technique, cache, users)
            name = f"{label}, {cache_words(cache)} cache"
            fig.add_trace(go.Scatter(x=x, y=[need(c).total_mb for c in x], mode="lines", name=name,
                                     line={"color": colours[i % len(colours)], "dash": DASHES.get(cache, "dashdot")},
                                     hovertemplate="%{x:,} tokens each: %{y:,.0f} MB<extra>" + name + "</extra>"))
            measured = [p for p in run.points if p.technique == technique and p.cache_type == cache and p.slots == users]
            if measured:
                fig.add_trace(go.Scatter(
                    x=[p.context_tokens for p in measured], y=[p.peak_mb for p in measured], mode="markers",
                    name=f"measured: {name}", showlegend=False, marker={"color": colours[i % len(colours)], "size": 9},
                    hovertemplate="measured peak %{y:,.0f} MB at %{x:,} tokens<extra>" + name + "</extra>"))
    for d in devices:
        fig.add_hline(y=d.usable_mb, line={"color": "grey", "width": 1}, annotation_text=f"{d.label}: usable",
                      annotation_position="top left")
    fig.update_layout(
        title=f"Memory against context, {users} user{'s' if users != 1 else ''} (one llama-server slot each)"
              "<br><sub>lines: the memory model; dots: llama-server's measured peak; grey: what each device leaves</sub>",
        xaxis_title="Context per user, tokens", yaxis_title="Memory, MB (log)", xaxis_type="log", yaxis_type="log",
        legend={"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0}, height=560)
    return readable_axes(fig)


@dataclass(frozen=True)
class FitAnswer:
    device: str  # label
    usable_mb: float
    label: str  # variant
    cache_type: str
    users: int
    max_context_tokens: int  # per user; 0: not even one user fits at the shortest context
    trained_context: int
    users_at_full_context: int

    def sentence(self) -> str:
        head = f"On a {self.device} ({self.usable_mb:,.0f} MB usable), {self.label} with a {cache_words(self.cache_type)} cache"
        if self.max_context_tokens == 0:
            return f"{head} cannot serve {self.users} user{'s' if self.users != 1 else ''} even at the shortest context."
        capped = " (the model's trained length)" if self.max_context_tokens >= self.trained_context else ""
        return (f"{head} serves {self.users} user{'s' if self.users != 1 else ''} at up to "
                f"{self.max_context_tokens:,} tokens each{capped}; at the full {self.trained_context:,} tokens it "
                f"serves {self.users_at_full_context:,}.")


def fit_answer(run: MemoryRun, technique: str, cache_type: str, users: int, device: fit.DevicePreset) -> FitAnswer:
    label, weights = variants(run)[technique]
    longest = memory.longest_context(device.usable_mb, need_for(run, technique, cache_type, users), run.trained_context)
    at_full = memory.most_users(device.usable_mb, lambda n: memory.predict_llamacpp(
        weights, run.shape, run.trained_context, n, cache_type, run.calibration))
    return FitAnswer(device.label, device.usable_mb, label, cache_type, users, longest, run.trained_context, at_full)


def validation_rows(run: MemoryRun) -> list[dict[str, object]]:
    """Every measured point: what llama.cpp reported, the measured peak, the model's prediction and its error."""
    rows = []
    for i, p in enumerate(run.points):
        n = run.predicted(p)
        rows.append({
            "variant": p.label, "KV cache": cache_words(p.cache_type), "users (slots)": p.slots,
            "context per user": p.context_tokens, "KV MB reported": p.kv_mb_reported, "KV MB model": n.kv_cache_mb,
            "peak MB measured": p.peak_mb, "peak MB model": n.total_mb,
            "error %": memory.error_pct(n.total_mb, p.peak_mb), "tok/s per user": p.per_user_tokens_per_s,
            "tok/s in all": p.total_tokens_per_s, "TTFT ms": p.ttft_ms_p50,
            "note": "calibration point" if i == 0 else ""})
    for i, t in enumerate(run.torch_points):
        n = run.torch_predicted(t)
        rows.append({
            "variant": "FP32 (transformers)", "KV cache": "F32", "users (slots)": 1, "context per user": t.context_tokens,
            "KV MB reported": t.kv_mb_measured, "KV MB model": n.kv_cache_mb,
            "peak MB measured": t.peak_mb, "peak MB model": n.total_mb,
            "error %": memory.error_pct(n.total_mb, t.peak_mb), "tok/s per user": math.nan,
            "tok/s in all": math.nan, "TTFT ms": math.nan,
            "note": ("calibration point (transformers); " if i == 0 else "") + "one prefill in its own process"
                    + (f"; {t.load_peak_mb:,.0f} MB right after loading" if math.isfinite(t.load_peak_mb) else "")})
    return rows


def worst_error_pct(run: MemoryRun) -> float:
    """The largest |error| over every point but the calibration ones (which fit by construction)."""
    return max((abs(r["error %"]) for r in validation_rows(run) if "calibration" not in r["note"]), default=math.nan)


def kv_ratios(run: MemoryRun, base: str = "f16") -> dict[str, float]:
    """cache type -> median of (its KV bytes / the F16 cache's) over the points measured at both, as llama.cpp reports."""
    f16 = {(p.technique, p.context_tokens, p.slots): p.kv_mb_reported for p in run.points if p.cache_type == base}
    out = {}
    for cache in cache_types(run):
        ratios = sorted(p.kv_mb_reported / f16[k] for p in run.points if p.cache_type == cache
                        and (k := (p.technique, p.context_tokens, p.slots)) in f16 and f16[k] > 0)
        if ratios:
            out[cache] = ratios[len(ratios) // 2]
    return out


def quality_rows(quality: Sequence[CacheQuality], ratios: dict[str, float]) -> list[dict[str, object]]:
    return [{"variant": q.label, "KV cache": cache_words(q.cache_type), "n_ctx": q.n_ctx, "chunks": q.chunks,
             "KV bytes vs F16": ratios.get(q.cache_type, math.nan), "KLD mean, nats": q.kld_mean,
             "± (KLD)": q.kld_mean_uncertainty, "KLD p99": q.kld_p99, "same top token": q.same_top,
             "perplexity": q.ppl} for q in quality]


def summary_lines(run: MemoryRun) -> list[str]:
    """What the run showed, in words with its numbers: KV bytes by cache type, KLD, and the model's worst error."""
    ratios, lines = kv_ratios(run), []
    for cache, ratio in ratios.items():
        if cache != "f16":
            lines.append(f"A {cache_words(cache)} KV cache holds {ratio:.1%} of the F16 cache's bytes, as "
                         "llama-server reports them (median over the contexts and slot counts measured).")
    for q in run.quality:
        lines.append(f"{q.label} with a {cache_words(q.cache_type)} cache: KLD {q.kld_mean:.4f} ± "
                     f"{q.kld_mean_uncertainty:.4f} nats against its F16-cache run at n_ctx {q.n_ctx:,} "
                     f"(llama-perplexity, {q.chunks} chunks), same top token {q.same_top:.1%}.")
    checked = len(run.points) - 1 + max(len(run.torch_points) - 1, 0)
    lines.append(f"The memory model is within {worst_error_pct(run):.1f}% of the measured peak at every one of "
                 f"{checked} points checked: llama-server's (calibrated once on {run.calibration.point}) and a "
                 f"transformers process's at {', '.join(f'{t.context_tokens:,}' for t in run.torch_points[1:]) or 'no'} "
                 "tokens (calibrated on its shortest context).")
    return lines


def report_parts(run: MemoryRun, device: fit.DevicePreset, users: int, cache_type: str
                 ) -> tuple[list[str], list[tuple[str, go.Figure]]]:
    """The Report's memory section: the fit sentence for each variant, the run's summary, and the chart."""
    lines = [fit_answer(run, t, cache_type, users, device).sentence() for t in variants(run)]
    return lines + summary_lines(run), [("Memory against context", memory_figure(run, users, [device]))]


REPORT_DEVICE = "phone-4gb"  # the device the Report's sentence names when Decide was asked none


def report_parts_for(run: MemoryRun | None, machine: str, device: str | None, users: int, cache: str
                     ) -> dict[str, list]:
    """The Report's memory kwargs (memory_lines, memory_figures, memory_rows) for Decide's device question (a 4 GB
    phone and a Q8_0 cache when it named no device); empty when the grid was not measured on this machine."""
    if run is None or run.hardware != machine:
        return {"memory_lines": [], "memory_figures": [], "memory_rows": []}
    if device is None:
        device, cache = REPORT_DEVICE, "q8_0"
    cache = cache if cache in cache_types(run) else cache_types(run)[0]
    device = fit.get_device(device)
    lines, figures = report_parts(run, device, users, cache)
    return {"memory_lines": lines, "memory_figures": figures, "memory_rows": validation_rows(run)}
