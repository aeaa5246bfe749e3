"""Serving at load: concurrent streaming requests against a real OpenAI-compatible server on 127.0.0.1.

One module per level, lowest first (none imports one above it):

    limits.py    the bounds (host, timeouts, max concurrency), ServingError, the input checks
    stats.py     what one request saw (RequestTiming), percentiles and throughput (summarize), $ per 1M tokens
    prompts.py   prompts cut from real text
    engines.py   which server serves a variant and how it is asked (from the technique and runtime registries)
    server.py    the server process: free port, readiness, memory watch, stop with its children
    client.py    the async load loop (one wave of concurrent streams)
    kv.py        KV cache bytes measured in process, and the context sweep kept beside the store
    batching.py  greedy answers alone and inside a batch, near-ties judged on the same weights
    bench.py     ServeSettings and serve_bench: one ServingRecord per (variant, prompt length, concurrency)
    attention.py per-sequence CPU attention and the `python -m core.serving.attention serve ...` launcher

This file stays empty of imports: a server subprocess starts as `python -m core.serving.attention`, which imports
this package first, and it must not load the lab's benchmark machinery.
"""
