"""What one streamed request saw, and the statistics and cost of a load (pure).

Measured from the client side, as serving benchmarks in the field do: each request streams its answer, and the
client notes when it was sent and when each chunk of text arrived. From that come time to first token (TTFT), the
gaps between chunks (inter-token latency, ITL), end-to-end latency, each user's own decode speed, and the aggregate
output tokens per second of the machine at a stated concurrency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from core.measure import cost
from core.measure.benchmark import percentile


@dataclass(frozen=True)
class TokenTop:
    """The two likeliest tokens at one position of an answer, with their log-probs (nats), as the server saw them."""
    first_id: int
    first_logprob: float
    second_id: int
    second_logprob: float

    @property
    def gap(self) -> float:
        return self.first_logprob - self.second_logprob

    def logprob_of(self, token: int) -> float | None:
        return {self.first_id: self.first_logprob, self.second_id: self.second_logprob}.get(token)


@dataclass(frozen=True)
class RequestTiming:
    """One streamed request as the client saw it. Times are the client's perf_counter, seconds."""
    sent_s: float
    chunk_s: tuple[float, ...]  # arrival of each streamed chunk that carried text
    done_s: float  # the stream ended
    output_tokens: int  # the server's own count (usage) when it sends one, else the chunks
    prompt_tokens: int  # the server's count of the prompt, 0 when it does not say
    text: str = ""
    error: str = ""
    server_timings: dict = field(default_factory=dict)  # the server's own account of this request, when it gives one
    token_tops: tuple[TokenTop, ...] = ()  # each token's top two as the server computed them, when it was asked

    @property
    def ok(self) -> bool:
        return not self.error and self.output_tokens > 0 and bool(self.chunk_s)

    @property
    def ttft_s(self) -> float:
        return self.chunk_s[0] - self.sent_s

    @property
    def e2e_s(self) -> float:
        return self.done_s - self.sent_s

    @property
    def gaps_s(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_s, self.chunk_s[1:])]

    @property
    def decode_tokens_per_s(self) -> float:
        """This user's own speed after the first token: tokens 2..N over the time they took."""
        span = self.chunk_s[-1] - self.chunk_s[0]
        return (self.output_tokens - 1) / span if span > 0 and self.output_tokens > 1 else float("nan")


@dataclass(frozen=True)
class LoadStats:
    requests: int
    errors: int
    output_tokens: int
    wall_s: float  # first request sent to last stream ended
    throughput_tokens_per_s: float  # every request's output tokens / wall_s
    per_user_tokens_per_s_median: float
    ttft_ms_p50: float
    ttft_ms_p90: float
    itl_ms_p50: float
    itl_ms_p90: float
    e2e_ms_p50: float
    e2e_ms_p90: float
    prompt_tokens_seen: int  # the server's count of the first prompt, 0 when unknown
    first_error: str = ""  # what the first failed request said, for the record's settings


def _p(xs: list[float], q: float) -> float:
    return percentile(xs, q) if xs else float("nan")


def summarize(timings: Sequence[RequestTiming]) -> LoadStats:
    """Latency percentiles over requests (ITL over every gap of every request) and aggregate throughput."""
    good = [t for t in timings if t.ok]
    if not timings:
        raise ValueError("no requests to summarize")
    wall = (max(t.done_s for t in timings) - min(t.sent_s for t in timings)) if good else float("nan")
    tokens = sum(t.output_tokens for t in good)
    speeds = [s for s in (t.decode_tokens_per_s for t in good) if math.isfinite(s)]
    return LoadStats(
        requests=len(good), errors=len(timings) - len(good), output_tokens=tokens, wall_s=wall,
        throughput_tokens_per_s=tokens / wall if good and wall > 0 else float("nan"),
        per_user_tokens_per_s_median=_p(speeds, 50),
        ttft_ms_p50=_p([t.ttft_s * 1e3 for t in good], 50), ttft_ms_p90=_p([t.ttft_s * 1e3 for t in good], 90),
        itl_ms_p50=_p([g * 1e3 for t in good for g in t.gaps_s], 50),
        itl_ms_p90=_p([g * 1e3 for t in good for g in t.gaps_s], 90),
        e2e_ms_p50=_p([t.e2e_s * 1e3 for t in good], 50), e2e_ms_p90=_p([t.e2e_s * 1e3 for t in good], 90),
        prompt_tokens_seen=next((t.prompt_tokens for t in good if t.prompt_tokens), 0),
        first_error=next((t.error or "no tokens streamed" for t in timings if not t.ok), ""),
    )


def usd_per_1m_output_tokens(throughput_tokens_per_s: float, usd_per_hour: float) -> float:
    """The machine's hourly price over the tokens it makes in an hour at this load; NaN when it made none."""
    if not (math.isfinite(throughput_tokens_per_s) and throughput_tokens_per_s > 0):
        return float("nan")
    return cost.usd_per_1m_tokens(throughput_tokens_per_s, usd_per_hour)


# --- the server's own account, beside the client's ------------------------------------------------

AGREEMENT_TOLERANCE = 0.05  # client and server figures further apart than this are reported, not averaged away


@dataclass(frozen=True)
class ServerAccount:
    """What llama-server says about one load point: its per-request timings and its /metrics counters."""
    requests_reporting: int  # requests whose last chunk carried the server's timings
    output_tokens: int  # sum of the server's predicted_n
    decode_tokens_per_s_median: float  # median of the server's predicted_per_second, one per request
    prompt_ms_p50: float  # the server's time to read each prompt (its TTFT without queueing and transport)
    metrics_tokens_predicted: float  # /metrics tokens_predicted_total, after minus before; NaN without /metrics
    metrics_prompt_tokens: float  # /metrics prompt_tokens_total, after minus before
    busy_slots_per_decode: float  # /metrics n_busy_slots_per_decode over the server's life so far

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    key = f"llamacpp:{name}"
    return after[key] - before.get(key, 0.0) if key in after else float("nan")


def server_account(timings: Sequence[RequestTiming], metrics_before: dict[str, float],
                   metrics_after: dict[str, float]) -> ServerAccount | None:
    """The server's figures for these requests; None when the server reports none."""
    reported = [t.server_timings for t in timings if t.ok and t.server_timings]
    if not reported and not metrics_after:
        return None
    return ServerAccount(
        requests_reporting=len(reported),
        output_tokens=int(sum(r.get("predicted_n", 0) for r in reported)),
        decode_tokens_per_s_median=_p([float(r["predicted_per_second"]) for r in reported
                                       if r.get("predicted_per_second")], 50),
        prompt_ms_p50=_p([float(r["prompt_ms"]) for r in reported if "prompt_ms" in r], 50),
        metrics_tokens_predicted=_delta(metrics_before, metrics_after, "tokens_predicted_total"),
        metrics_prompt_tokens=_delta(metrics_before, metrics_after, "prompt_tokens_total"),
        busy_slots_per_decode=metrics_after.get("llamacpp:n_busy_slots_per_decode", float("nan")),
    )


def _apart(a: float, b: float) -> bool:
    return math.isfinite(a) and math.isfinite(b) and max(a, b) > 0 and abs(a - b) / max(a, b) > AGREEMENT_TOLERANCE


def disagreements(stats: LoadStats, account: ServerAccount) -> list[str]:
    """Where the client's figures and the server's own differ by more than 5%, in words (empty when they agree).

    The server times each request from its first decoded token to its last; the client from the first streamed
    chunk to the last, so transport and chunking sit between them. Output tokens must match exactly."""
    out = []
    if _apart(stats.per_user_tokens_per_s_median, account.decode_tokens_per_s_median):
        out.append(f"decode speed per user: the client measured {stats.per_user_tokens_per_s_median:.1f} tok/s, "
                   f"the server reports {account.decode_tokens_per_s_median:.1f} tok/s (median of its per-request "
                   "timings)")
    if account.requests_reporting and account.output_tokens != stats.output_tokens:
        out.append(f"output tokens: the client counted {stats.output_tokens}, the server's timings "
                   f"{account.output_tokens}")
    if _apart(float(stats.output_tokens), account.metrics_tokens_predicted):
        out.append(f"output tokens: the client counted {stats.output_tokens}, the server's /metrics "
                   f"{account.metrics_tokens_predicted:.0f}")
    return out
