"""How much a quantized tensor damages the model, estimated without running it, and the cheapest mix under a size.

Pure numpy. The estimate is the importance-weighted squared rounding error of one weight matrix, the quantity
llama.cpp's quantizer itself minimises when handed an importance matrix: for a linear layer y = W x with inputs
whose columns are roughly uncorrelated, E||(W - Q) x||^2 = sum_c imp_c * sum_r (W - Q)_rc^2 with imp_c = E[x_c^2].
The solver assumes the damage of many tensors adds up (the KLD of a mix ~ the sum of each tensor's share), which
ignores interactions between tensors; the measured KLD of every searched file says how far that holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Option:
    """One way to store one tensor: its ggml type, the bytes it takes in the file, and its estimated damage."""
    qtype: str  # the type llama.cpp really wrote (after any block-size fallback), e.g. "q5_0"
    bytes: int
    err: float  # importance-weighted squared error, in the table's units (the solver only compares them)


def weighted_error(reference: np.ndarray, quantized: np.ndarray, importance: np.ndarray | None) -> tuple[float, float]:
    """(absolute, relative) importance-weighted squared error of a [rows, cols] matrix; importance is [cols].

    absolute: sum_c imp_c sum_r (W - Q)^2, the expected squared error of the layer's output per token;
    relative: the same divided by sum_c imp_c sum_r W^2, the noise-to-signal ratio of that output.
    """
    if reference.shape != quantized.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, quantized {quantized.shape}")
    imp = np.ones(reference.shape[-1]) if importance is None else np.asarray(importance, dtype=np.float64)
    if imp.shape != (reference.shape[-1],):
        raise ValueError(f"importance has {imp.shape} values for {reference.shape[-1]} columns")
    diff = (reference.astype(np.float64) - quantized.astype(np.float64)) ** 2
    absolute = float(diff.sum(0) @ imp)
    signal = float((reference.astype(np.float64) ** 2).sum(0) @ imp)
    return absolute, absolute / signal if signal > 0 else 0.0


def _pick(options: dict[str, list[Option]], lam: float) -> dict[str, Option]:
    """Each tensor alone: the option minimising err + lam * bytes."""
    return {name: min(opts, key=lambda o: (o.err + lam * o.bytes, o.bytes)) for name, opts in options.items()}


def total_bytes(choice: dict[str, Option]) -> int:
    return sum(o.bytes for o in choice.values())


def total_err(choice: dict[str, Option]) -> float:
    return sum(o.err for o in choice.values())


def bounds(options: dict[str, list[Option]]) -> tuple[int, int]:
    """(smallest, largest) total bytes any choice can take."""
    return (sum(min(o.bytes for o in opts) for opts in options.values()),
            sum(max(o.bytes for o in opts) for opts in options.values()))


def solve(options: dict[str, list[Option]], budget_bytes: int) -> dict[str, Option]:
    """The choice of one option per tensor with total bytes <= budget and (nearly) the least total err.

    A Lagrangian solve (bisect lam on err + lam * bytes, every tensor chosen independently) reaches the points of the
    lower convex hull; a greedy fill then spends what it left over on the upgrades with the best err saved per
    byte, so the result sits just under the budget.
    """
    low, _high = bounds(options)
    if budget_bytes < low:
        raise ValueError(f"a budget of {budget_bytes} bytes is below the smallest possible mix ({low} bytes)")
    lo, hi = 0.0, 1.0
    while total_bytes(_pick(options, hi)) > budget_bytes:
        hi *= 4
        if hi > 1e30:
            break
    for _ in range(80):  # bisect on the price of a byte: the smallest lam whose choice fits
        mid = (lo + hi) / 2
        if total_bytes(_pick(options, mid)) <= budget_bytes:
            hi = mid
        else:
            lo = mid
    choice = _pick(options, hi)
    if total_bytes(choice) > budget_bytes:  # lam ran out of range: every tensor at its smallest
        choice = {n: min(opts, key=lambda o: (o.bytes, o.err)) for n, opts in options.items()}
    return greedy_fill(options, choice, budget_bytes)


def greedy_fill(options: dict[str, list[Option]], choice: dict[str, Option], budget_bytes: int) -> dict[str, Option]:
    """Upgrade one tensor at a time, best err saved per extra byte first, while the total stays within budget."""
    choice = dict(choice)
    left = budget_bytes - total_bytes(choice)
    while True:
        best, best_gain = None, 0.0
        for name, opts in options.items():
            now = choice[name]
            for o in opts:
                extra = o.bytes - now.bytes
                if o.err < now.err and extra <= left:
                    gain = (now.err - o.err) / max(extra, 1)
                    if gain > best_gain:
                        best, best_gain = (name, o), gain
        if best is None:
            return choice
        left -= best[1].bytes - choice[best[0]].bytes
        choice[best[0]] = best[1]


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan for fewer than 3 pairs."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} estimates against {len(y)} measurements")
    if len(x) < 3:
        return float("nan")
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    for v in np.unique(values):  # ties share their mean rank
        same = values == v
        ranks[same] = ranks[same].mean()
    return ranks
