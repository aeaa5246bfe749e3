"""What one streamed request saw, and the statistics and cost of a load (pure).

Measured from the client side, as serving benchmarks in the field do: each request streams its answer, and the
client notes when it was sent and when each chunk of text arrived. From that come time to first token (TTFT), the
gaps between chunks (inter-token latency, ITL), end-to-end latency, each user's own decode speed, and the aggregate
output tokens per second of the machine at a stated concurrency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from core.measure import cost
from core.measure.benchmark import percentile


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
