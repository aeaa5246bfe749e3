"""Arena: several variants answer one prompt side by side, token by token, with their own live timings.

The decode loop is the variant's Runner.stream (the same loop the sweep times), so the arena's numbers are
measured the way the sweep's are. On a small CPU the variants run one step each in turn (round robin), so
they look live side by side; each stream's timings count only its own steps, never the others'.
Everything here is pure except `build_variant` and `warm_up`, which load and run a model.
"""

from __future__ import annotations

import html
import math
import random
import string
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import plotly.graph_objects as go
import torch

from core import models, runtimes, techniques
from core.models import saved
from core.runtimes import as_runner
from core.store.records import VariantRecord

Schedule = Literal["one after another", "round-robin"]  # the first is the default: on 2 cores it disturbs timings least
SCHEDULES: tuple[str, ...] = get_args(Schedule)
MIN_VARIANTS, MAX_VARIANTS = 2, 4
MAX_PROMPT_CHARS = 1000  # a typed prompt longer than this is refused: prefill time grows with it, for everyone
REDRAW_S = 0.5  # redraw a column at most this often: the browser and server draw on the same cores the models use
RENEW_S = 20.0  # a long run renews its hold on the machine this often (it lapses by itself if the server dies)
DEFAULT_KEYS = tuple(techniques.defaults_for("arena"))  # picked at first, where this device can run them


def saved_students(model_key: str) -> dict[str, saved.SavedStudent]:
    """Finished students distilled from this model, by the technique key their measurements are stored under."""
    return {saved.student_key(s.facts["student_layers"], s.facts["run"]): s
            for s in saved.saved_students() if s.facts.get("teacher") == model_key and s.facts.get("complete")}


def variant_labels(students: Mapping[str, saved.SavedStudent]) -> dict[str, str]:
    """Every variant the arena can build, by key: the registry's, then this model's distilled students."""
    return {k: t.label for k, t in techniques.TECHNIQUES.items()} | {
        k: saved.student_label(s.facts["student_layers"], s.facts["run"]) for k, s in students.items()}


def offered(device: str, students: Mapping[str, saved.SavedStudent]) -> list[str]:
    """The variants this device can run: the registry's, then the distilled students."""
    return [k for k, t in techniques.TECHNIQUES.items() if not t.why_not(device)] + list(students)


@dataclass(frozen=True)
class Variants:
    """What the Arena offers for one model on one device, read once per page run (labels would rescan the folder)."""
    students: dict[str, saved.SavedStudent]
    labels: dict[str, str]
    options: list[str]

    def label(self, key: str) -> str:
        return self.labels.get(key, key)

    def student_dir(self, key: str) -> str:
        """Where a distilled student is saved; "" for a registry technique."""
        return str(self.students[key].path) if key in self.students else ""


def variants(model_key: str, device: str) -> Variants:
    students = saved_students(model_key)
    return Variants(students, variant_labels(students), offered(device, students))


def store_votes(results, model: str, prompt: str, keys: Sequence[str], winner: str | None, session: str) -> None:
    """One verdict, stored as the pairwise votes it stands for (vote_pairs) in the results store."""
    for pair, won in vote_pairs(keys, winner):
        results.add_vote(model, prompt, pair, won, session)


def reference_of(keys: Sequence[str]) -> str:
    """The answer others are highlighted against: the registry's reference if it runs, else the first."""
    return techniques.REFERENCE if techniques.REFERENCE in keys else keys[0]


def answer_names(keys: Sequence[str], blind: bool, label: Callable[[str], str], seed: int) -> dict[str, str]:
    """What each answer is called: "Answer A", "Answer B", ... in a shuffled order in blind mode, else its label."""
    if not blind:
        return {k: label(k) for k in keys}
    letters = blind_labels(keys, seed)
    return {k: f"Answer {letters[k]}" for k in keys}


def build_variant(checkpoint: str, key: str, student_dir: str, device: str) -> runtimes.Runner:
    """A registry technique on the model's checkpoint, or a distilled student from its own folder."""
    if key in techniques.TECHNIQUES:
        technique = techniques.get(key)
        return runtimes.load(technique, technique.runtime, Path(checkpoint), device, torch.get_num_threads())
    return runtimes.as_runner(models.load_model(Path(student_dir), torch.float32, device), device)


def prompt_problem(prompt: str) -> str | None:
    """Why a typed prompt cannot be run, or None."""
    if not prompt.strip():
        return "Type a prompt first."
    if len(prompt) > MAX_PROMPT_CHARS:
        return f"The prompt has {len(prompt):,} characters; the Arena takes at most {MAX_PROMPT_CHARS:,}. Shorten it."
    return None
WARMUP_TOKENS = 4  # one short untimed decode after loading: first calls pay for lazy init and page faults


@dataclass(frozen=True)
class Step:
    key: str  # technique key of the variant that produced it
    index: int  # position of the token in that variant's answer, from 0
    token_id: int
    own_s: float  # that variant's own compute time since its start (a Runner's stream)


def race(streams: Mapping[str, Iterator[tuple[int, float]]], schedule: Schedule = "round-robin") -> Iterator[Step]:
    """Interleave token streams one step each in turn (or drain them one by one), as Steps."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "one after another":
        for key, stream in streams.items():
            for i, (token, own_s) in enumerate(stream):
                yield Step(key, i, token, own_s)
        return
    live = {key: iter(stream) for key, stream in streams.items()}
    counts = dict.fromkeys(live, 0)
    while live:
        for key in list(live):
            try:
                token, own_s = next(live[key])
            except StopIteration:
                del live[key]
                continue
            yield Step(key, counts[key], token, own_s)
            counts[key] += 1


def run_race(streams: Mapping[str, Iterator[tuple[int, float]]], schedule: Schedule, log: RaceLog, new_tokens: int,
             renew: Callable[[], object], redraw_s: float = REDRAW_S, renew_s: float = RENEW_S,
             clock: Callable[[], float] = time.perf_counter) -> Iterator[Step]:
    """Race the streams into `log`, yielding each step after which its variant's column should be redrawn: at most
    every `redraw_s` per variant, and at its last token. A variant's clock starts at its first token instead of a
    draw: a draw right after prefill slowed the next decode step 2x. `renew()` is called every `renew_s`."""
    drawn, renewed = dict.fromkeys(streams, 0.0), clock()
    for step in race(streams, schedule):
        log.add(step)
        now = clock()
        if now - renewed > renew_s:
            renew()
            renewed = now
        if step.index == 0:
            drawn[step.key] = now
        if now - drawn[step.key] > redraw_s or step.index == new_tokens - 1:
            yield step
            drawn[step.key] = now


@dataclass(frozen=True)
class LiveStats:
    tokens: int
    ttft_ms: float  # prefill + first token
    decode_tokens_per_s: float  # tokens after the first over their own decode time; NaN before two tokens
    step_ms: tuple[float, ...]  # per token: the first is the TTFT, the rest one decode step each


def live_stats(own_s: Sequence[float]) -> LiveStats:
    """From one variant's cumulative own times (seconds, one per token)."""
    if not own_s:
        return LiveStats(0, math.nan, math.nan, ())
    steps = (own_s[0],) + tuple(b - a for a, b in zip(own_s, own_s[1:]))
    decode_s = own_s[-1] - own_s[0]
    tps = (len(own_s) - 1) / decode_s if len(own_s) > 1 and decode_s > 0 else math.nan
    return LiveStats(len(own_s), own_s[0] * 1e3, tps, tuple(1e3 * s for s in steps))


def differs(tokens: Sequence[int], reference: Sequence[int]) -> list[bool]:
    """Per position: does this token differ from the reference's at the same position? Positions the
    reference has not reached yet count as equal (it may still get there)."""
    return [i < len(reference) and t != reference[i] for i, t in enumerate(tokens)]


def first_divergence(tokens: Sequence[int], reference: Sequence[int]) -> int | None:
    return next((i for i, d in enumerate(differs(tokens, reference)) if d), None)


def token_pieces(tokenizer, token_ids: Sequence[int]) -> list[str]:
    """The text each token adds, decoded incrementally: a token that ends half-way through a multi-byte
    character adds "" and the character comes out whole with the token that completes it."""
    pieces, emitted = [], ""
    for i in range(len(token_ids)):
        text = tokenizer.decode(list(token_ids[: i + 1]), skip_special_tokens=True)
        if text.endswith("\ufffd") and i < len(token_ids) - 1:  # incomplete character: wait for its other bytes
            pieces.append("")
            continue
        pieces.append(text[len(emitted):] if text.startswith(emitted) else text)
        emitted = text
    return pieces


MARK_STYLE = "background:#ffd54f;color:#000;border-radius:2px"


def tokens_html(pieces: Sequence[str], flags: Sequence[bool]) -> str:
    """The answer as HTML, tokens that differ from the reference marked; everything escaped."""
    out = []
    for piece, flag in zip(pieces, flags):
        text = html.escape(piece).replace("\n", "<br>")
        out.append(f'<mark style="{MARK_STYLE}">{text}</mark>' if flag else text)
    return "".join(out)


def blind_labels(keys: Sequence[str], seed: int) -> dict[str, str]:
    """key -> "A", "B", ... in a shuffled order fixed by `seed`, so a rerun shows the same letters."""
    order = list(keys)
    random.Random(seed).shuffle(order)
    return {key: string.ascii_uppercase[i] for i, key in enumerate(order)}


def vote_pairs(keys: Sequence[str], winner: str | None) -> list[tuple[tuple[str, str], str | None]]:
    """The pairwise votes one verdict stands for: the winner beat each other answer; a tie ties every pair."""
    if winner is not None and winner not in keys:
        raise ValueError(f"winner {winner!r} is not one of {list(keys)}")
    if winner is None:
        return [((a, b), None) for i, a in enumerate(keys) for b in keys[i + 1:]]
    return [((winner, other), winner) for other in keys if other != winner]


@dataclass(frozen=True)
class SweepComparison:
    technique: str
    live_tokens_per_s: float
    sweep_tokens_per_s: float  # the sweep's median over its timed runs
    ratio: float  # live / sweep
    live_new_tokens: int
    sweep_new_tokens: int | None
    live_prompt_tokens: int
    sweep_prompt_tokens: int | None

    @property
    def like_for_like(self) -> bool:
        """Same prompt length and token count as the sweep: only then should the speeds agree closely."""
        return (self.live_new_tokens, self.live_prompt_tokens) == (self.sweep_new_tokens, self.sweep_prompt_tokens)


def compare_all(keys: Sequence[str], log: RaceLog, prompt_tokens: int,
                swept: Mapping[str, VariantRecord]) -> list[SweepComparison]:
    """Each variant's live speed against its sweep record, for those the sweep measured."""
    return [compare_with_sweep(k, log.stats(k), prompt_tokens, swept[k]) for k in keys if k in swept]


def compare_with_sweep(technique: str, stats: LiveStats, prompt_tokens: int,
                       record: VariantRecord) -> SweepComparison:
    sweep = record.decode_tokens_per_s_median
    ratio = stats.decode_tokens_per_s / sweep if sweep and math.isfinite(sweep) else math.nan
    return SweepComparison(technique, stats.decode_tokens_per_s, sweep, ratio, stats.tokens,
                           record.settings.get("new_tokens"), prompt_tokens, record.settings.get("prompt_tokens"))


@dataclass
class RaceLog:
    """What a race produced, per variant key: token ids and cumulative own times (filled as Steps arrive)."""
    keys: tuple[str, ...]
    tokens: dict[str, list[int]] = field(default_factory=dict)
    own_s: dict[str, list[float]] = field(default_factory=dict)

    def add(self, step: Step) -> None:
        self.tokens.setdefault(step.key, []).append(step.token_id)
        self.own_s.setdefault(step.key, []).append(step.own_s)

    def stats(self, key: str) -> LiveStats:
        return live_stats(self.own_s.get(key, []))


def stats_line(stats: LiveStats) -> str:
    """One variant's live timings, in markdown."""
    tps = "…" if stats.decode_tokens_per_s != stats.decode_tokens_per_s else f"{stats.decode_tokens_per_s:.1f}"
    return f"TTFT **{stats.ttft_ms:.0f} ms** · decode **{tps} tok/s** · {stats.tokens} tokens"


def timeline_figure(step_ms: Mapping[str, Sequence[float]]) -> go.Figure:
    """Per-token time of each variant (ms): token 1 is the time to first token, the rest decode steps."""
    fig = go.Figure()
    for name, steps in step_ms.items():
        fig.add_trace(go.Scatter(x=list(range(1, len(steps) + 1)), y=list(steps), mode="lines+markers", name=name,
                                 marker=dict(size=4)))
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=30, b=10), title=dict(text="Time per token"),
                      legend=dict(orientation="h", y=-0.3))
    fig.update_xaxes(title_text="token (1 = time to first token)")
    fig.update_yaxes(title_text="ms (log scale)", type="log")
    return fig


def warm_up(model, input_ids: torch.Tensor, device: str = "cpu", tokens: int = WARMUP_TOKENS) -> None:
    """One short untimed decode, as the sweep's warm-up run: later timed streams do not pay first-call costs.

    `model` is a Runner of any runtime, or a torch model (run eagerly)."""
    for _ in as_runner(model, device).stream(input_ids, tokens):
        pass
