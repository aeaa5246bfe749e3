"""The load loop: an async client that sends one wave of concurrent streaming requests and times every chunk."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence

import httpx2

from core.paths import Stopped
from core.serving.limits import HOST, REQUEST_TIMEOUT_S, ServingError, ShouldStop
from core.serving.stats import RequestTiming, TokenTop


def _parse_sse(line: str) -> dict | None:
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if not payload or payload == "[DONE]":
        return None
    return json.loads(payload)


def _token_tops(event: dict) -> list[TokenTop]:
    """The top two tokens and their log-probs at each token of a chunk whose request asked for logprobs >= 2.

    llama-server puts them under choices[0].logprobs.content, computed from the full distribution before sampling.
    """
    out = []
    for choice in event.get("choices") or []:
        for tok in (choice.get("logprobs") or {}).get("content") or []:
            top = sorted(((t.get("logprob"), t.get("id", -1)) for t in tok.get("top_logprobs") or []
                          if t.get("logprob") is not None), reverse=True)
            if len(top) >= 2:
                out.append(TokenTop(int(top[0][1]), float(top[0][0]), int(top[1][1]), float(top[1][0])))
    return out


async def one_request(client, url: str, body: dict, timeout_s: float) -> RequestTiming:
    """POST one streaming completion and time every chunk on arrival."""
    sent = time.perf_counter()
    chunks: list[float] = []
    texts: list[str] = []
    usage: dict = {}
    finish = ""
    error = ""
    server_timings: dict = {}
    token_tops: list[TokenTop] = []  # each token's top two, when the request asked for logprobs
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    detail = (await response.aread()).decode(errors="replace")[:300]
                    raise RuntimeError(f"HTTP {response.status_code}: {detail}")
                async for line in response.aiter_lines():
                    event = _parse_sse(line)
                    if event is None:
                        continue
                    if "error" in event:
                        raise RuntimeError(str(event["error"]))
                    text = "".join(c.get("text") or "" for c in event.get("choices") or [])
                    if text:
                        chunks.append(time.perf_counter())
                        texts.append(text)
                    token_tops += _token_tops(event)
                    usage = event.get("usage") or usage
                    server_timings = event.get("timings") or server_timings  # llama-server's, on the last chunk
                    finish = next((c.get("finish_reason") for c in event.get("choices") or []
                                   if c.get("finish_reason")), finish)
    except TimeoutError:
        error = f"timed out after {timeout_s:.0f} s"
    except Exception as e:  # one failed request is counted, not fatal to the load
        error = f"{type(e).__name__}: {e}"
    done = time.perf_counter()
    wanted = int(body.get("max_tokens") or 0)
    # The server's own count when it sends one; else "length" means it stopped at max_tokens. Counting chunks is
    # the last resort: a server holds back a token that ends mid-character and sends it with the next one.
    counted = usage.get("completion_tokens") or (wanted if finish == "length" else len(chunks))
    tokens = int(counted) if not error else 0
    if not error and tokens < wanted:  # a stream cut short is a failed request, not a short success
        error, tokens = f"the stream ended after {tokens} of {wanted} tokens", 0
    return RequestTiming(sent, tuple(chunks), done, tokens, int(usage.get("prompt_tokens") or 0), "".join(texts), error,
                         server_timings if not error else {}, tuple(token_tops) if not error else ())


async def _load(base_url: str, bodies: Sequence[dict], timeout_s: float, should_stop: ShouldStop) -> list[RequestTiming]:
    limits = httpx2.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(timeout_s), limits=limits, trust_env=False) as client:
        tasks = [asyncio.create_task(one_request(client, f"{base_url}/v1/completions", b, timeout_s)) for b in bodies]
        while not all(t.done() for t in tasks):
            if should_stop():
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise Stopped("stopped during a load; the points finished before it are kept")
            await asyncio.wait(tasks, timeout=0.1)
        return [t.result() for t in tasks]


def run_load(base_url: str, bodies: Sequence[dict], timeout_s: float = REQUEST_TIMEOUT_S,
             should_stop: ShouldStop = lambda: False) -> list[RequestTiming]:
    """All `bodies` sent at once (one wave of len(bodies) concurrent streams); returns when all ended."""
    if not base_url.startswith(f"http://{HOST}:"):
        raise ServingError(f"the load generator only talks to {HOST}, not {base_url}")
    return asyncio.run(_load(base_url, bodies, timeout_s, should_stop))
