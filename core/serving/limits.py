"""The bounds every part of serving obeys, the error it raises, and the checks of a run's input (pure).

Every request has a timeout, every load is a fixed number of requests, every wait has a deadline, and the only
address ever contacted is 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

HOST = "127.0.0.1"  # the only address the load generator talks to
MAX_CONCURRENCY = 64  # above this a 2-core machine only queues; the limit keeps a typo from starting 10k streams
REQUEST_TIMEOUT_S = 600.0  # one request, start to last token
SERVER_START_TIMEOUT_S = 240.0  # loading a model and binding the port
STOP_TIMEOUT_S = 10.0  # SIGTERM, then SIGKILL
MEMORY_SAMPLE_S = 0.05
NEAR_TIE_LOGIT_GAP = 0.01  # top-2 logits (of ~10-30) closer than this: float rounding of another batch shape may flip them

Report = Callable[[float, str], None]
ShouldStop = Callable[[], bool]


class ServingError(ValueError):
    """Bad input or a server that cannot be used, with a message that says what to do."""


def check_concurrency(values: Sequence[int]) -> list[int]:
    bad = [c for c in values if not 1 <= c <= MAX_CONCURRENCY]
    if bad:
        raise ServingError(f"concurrency must be between 1 and {MAX_CONCURRENCY} simultaneous requests, got "
                           f"{bad}; on a machine this size more streams only queue")
    if not values:
        raise ServingError("no concurrency given; pass e.g. 1,4,16")
    return sorted(set(values))


def check_lengths(prompt_tokens: Sequence[int], new_tokens: int, max_context_tokens: int) -> None:
    if new_tokens < 2:
        raise ServingError(f"new tokens must be >= 2 to time decoding, got {new_tokens}")
    if not prompt_tokens or min(prompt_tokens) < 1:
        raise ServingError(f"prompt lengths must be >= 1 token, got {list(prompt_tokens)}")
    too_long = [p for p in prompt_tokens if p + new_tokens > max_context_tokens]
    if too_long:
        raise ServingError(
            f"prompt {too_long} + {new_tokens} new tokens is longer than the model's context of "
            f"{max_context_tokens} tokens; use prompts of at most {max_context_tokens - new_tokens} tokens")


def check_context(context_tokens: int, max_context_tokens: int) -> None:
    """A per-slot context above what the model was trained on is refused (0: the caller sizes it)."""
    if context_tokens < 0:
        raise ServingError(f"context must be >= 0 tokens, got {context_tokens}")
    if context_tokens > max_context_tokens:
        raise ServingError(f"a context of {context_tokens:,} tokens per user is above the {max_context_tokens:,} "
                           f"tokens this model was trained on; use at most {max_context_tokens:,}")
