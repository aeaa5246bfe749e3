"""Small model first, large model when unsure: a two-model cascade on multiple choice and on support routing.

Both tasks are answered the same way by both models: every choice (an answer of a multiple-choice question, or one of
the five team names) is scored by its summed log-probability as a continuation of the prompt, and the model's answer
is the highest-scoring choice. The first stage's confidence is the softmax over its choices' scores, read at its own
answer: the probability the small model gives its answer among the choices it had. Below the threshold, the request
goes on to the second, larger model.

Each stage scores every item once, timed item by item (core/hybrids/curve.py explains why one measurement serves every
threshold). Stages load one after the other, so the two models never share the memory or the cores.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Literal, Sequence, get_args

import torch

from core import models, runtimes, techniques
from core.hybrids import curve
from core.hybrids.classical import SHOTS_RANGE, few_shot_prompt, pick_shots
from core.hybrids.curve import CascadePoint, CascadeResult, ItemOutcome
from core.measure import benchmark, cost, evaluate
from core.measure.evaluate import MCItem
from core.models.saved import saved_students
from core.paths import Stopped
from core.techniques import lora

Report = Callable[[float, str], None]
TaskKey = Literal["mc", "support-routing"]
TASKS: tuple[str, ...] = get_args(TaskKey)
STUDENT = "student"  # the first stage named by role: the newest distilled student saved here
ROUTING_TEST = lora.BUNDLED_TASKS["support-routing"][1]
ROUTING_SHOTS = 5  # worked examples before each routing prompt, one per team, as the classical cascade's LLM gets
CONFIDENCE = ("softmax over the choices' summed log-probabilities (each choice scored as a continuation of the "
              "prompt): the probability of the first model's own answer")


# ---------------------------------------------------------------- the task: items with choices


@dataclass(frozen=True)
class PromptItem:
    """A prompt whose answer is one of `choices`, each scored as " " + choice right after the prompt (routing)."""
    prompt: str
    choices: tuple[str, ...]
    answer: int  # index into choices


Item = MCItem | PromptItem


@dataclass(frozen=True)
class Task:
    name: str  # stored with the result: "mc_general", "support-routing", or the user's file name
    kind: TaskKey
    path: str
    items: tuple[Item, ...]
    shots: int = 0  # worked examples before each prompt

    @property
    def shots_words(self) -> str:
        return f", {self.shots}-shot" if self.shots else ""


def routing_items(examples: Sequence[lora.Example], labels: Sequence[str], prefix: str = "") -> list[PromptItem]:
    return [PromptItem(prefix + e.prompt, tuple(labels), labels.index(e.completion)) for e in examples]


def shots_for(kind: str, shots: int | None) -> int:
    """Few-shot examples for the task: routing gets ROUTING_SHOTS unless told; multiple choice is read zero-shot."""
    if shots is None:
        return ROUTING_SHOTS if kind == "support-routing" else 0
    lo, hi = SHOTS_RANGE
    if not (isinstance(shots, int) and lo <= shots <= hi):
        raise ValueError(f"--shots must be a whole number from {lo} to {hi}, got {shots!r}.")
    if shots and kind != "support-routing":
        raise ValueError("--shots is for the support-routing task (its examples come from the training split); "
                         "multiple choice is scored zero-shot, as the lab's MC accuracy is. Leave --shots out.")
    return shots


def load_task(kind: str, data: str = "", max_items: int = 0, shots: int | None = None) -> Task:
    """The bundled test set of `kind` (or the user's file in its format), cut to the first `max_items` (0 = all).

    Routing reads the bundled train/test split, or splits the user's file as `python -m core lora --data` does;
    its few-shot examples come from the training part, one per team in turn (as the classical cascade picks them).
    """
    if kind not in TASKS:
        raise ValueError(f"Unknown task {kind!r}; choose from {', '.join(TASKS)}.")
    if max_items < 0:
        raise ValueError(f"--max-items must be 0 (all items) or more, got {max_items}.")
    shots = shots_for(kind, shots)
    if data and not Path(data).is_file():
        raise ValueError(f"Task file not found: {data}. Give a JSONL file in the {kind} task's format.")
    if kind == "mc":
        path = Path(data) if data else evaluate.DEFAULT_MC_SET
        items: list[Item] = list(evaluate.load_mc_jsonl(path))
        name = path.stem
    else:
        path = Path(data) if data else ROUTING_TEST
        train, test = lora.load_task("support-routing", Path(data) if data else None)  # one label only: refused
        labels = lora.check_labels(train + test)
        prefix = few_shot_prompt(pick_shots(train, shots), "")
        items, name = routing_items(test, labels, prefix), (path.stem if data else "support-routing")
    items = items[:max_items] if max_items else items
    return Task(name, kind, str(path), tuple(items), shots)


# ---------------------------------------------------------------- scoring one item


def _continuation(tokenizer, context: str, context_ids: list[int], continuation: str) -> list[int]:
    """The continuation's ids as the model reads them after the context (split as evaluate.continuation_pairs
    splits a multiple-choice answer from its question)."""
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    if whole[:len(context_ids)] == context_ids and len(whole) > len(context_ids):
        return whole[len(context_ids):]
    return tokenizer(continuation, add_special_tokens=False)["input_ids"]


def prompt_scores(runner, tokenizer, item: PromptItem) -> list[float]:
    """Summed log-probability of each " " + choice after the prompt. One pass over the prompt scores every choice's
    first token (each team name is one token for SmolLM2); a longer choice is read once more, prompt included."""
    ctx = tokenizer(item.prompt, add_special_tokens=False)["input_ids"]
    first = runner.window_logprobs(torch.tensor([ctx]))[-1]  # [V]: predicts the token after the prompt
    scores = []
    for choice in item.choices:
        cont = _continuation(tokenizer, item.prompt, ctx, " " + choice)
        total = float(first[cont[0]])
        if len(cont) > 1:
            rows = runner.window_logprobs(torch.tensor([ctx + cont[:-1]]))[len(ctx):]  # [len(cont) - 1, V]
            total += float(rows.gather(1, torch.tensor(cont[1:])[:, None]).sum())
        scores.append(total)
    return scores


def item_scores(runner, tokenizer, item: Item) -> list[float]:
    """A multiple-choice question goes through the runner's own scorer, as the lab's MC accuracy does."""
    if isinstance(item, MCItem):
        return runner.choice_logprobs(tokenizer, [item])[0]
    return prompt_scores(runner, tokenizer, item)


@dataclass(frozen=True)
class StageAnswer:
    pick: int  # index of the highest-scoring choice (the first on ties)
    confidence: float  # softmax over the choices' scores, at the pick
    ms: float  # wall time to score this item's choices


def answer_of(scores: Sequence[float], choices: tuple[str, ...], ms: float) -> StageAnswer:
    pick, _ = evaluate.mc_picks(list(scores), choices)
    probs = torch.softmax(torch.tensor(scores, dtype=torch.float64), dim=0)
    return StageAnswer(pick, min(1.0, max(0.0, float(probs[pick]))), ms)


def score_stage(runner, tokenizer, items: Sequence[Item], say: Report = lambda f, m: None,
                stop: Callable[[], bool] = lambda: False, name: str = "") -> list[StageAnswer]:
    """Every item scored once and timed on its own, after one untimed warm-up item (first calls pay for lazy set-up)."""
    if not items:
        raise ValueError("No items to score: the task file is empty.")
    item_scores(runner, tokenizer, items[0])
    out = []
    with benchmark.timing_phase():
        for i, item in enumerate(items):
            if stop():
                raise Stopped(f"Stopped after {i} of {len(items)} items of {name}.")
            if i % 20 == 0:
                say(i / len(items), f"{name}: item {i + 1}/{len(items)}")
            t0 = time.perf_counter()
            scores = item_scores(runner, tokenizer, item)
            out.append(answer_of(scores, item.choices, (time.perf_counter() - t0) * 1e3))
    return out


def answer_name(item: Item, index: int) -> str:
    """A team's name for routing; a letter for a multiple-choice answer (A is the first choice)."""
    return item.choices[index] if isinstance(item, PromptItem) else chr(ord("A") + index)


def outcomes_of(items: Sequence[Item], first: Sequence[StageAnswer], second: Sequence[StageAnswer]
                ) -> list[ItemOutcome]:
    if not (len(items) == len(first) == len(second)):
        raise ValueError(f"each stage must answer every item: {len(items)} items, {len(first)} and {len(second)} "
                         "answers")
    return [ItemOutcome(answer_name(it, it.answer), answer_name(it, a.pick), a.confidence, a.ms,
                        answer_name(it, b.pick), b.ms) for it, a, b in zip(items, first, second)]


# ---------------------------------------------------------------- the stages


@dataclass(frozen=True)
class Stage:
    name: str  # as asked: "student", "gguf-q2_k", "fp32", "gemma3-270m", a folder
    label: str  # in words a reader knows
    model: str  # what models.resolve reads: a bundled key or a checkpoint folder
    technique: str  # the registry key applied to that model


def _student(base_model: str) -> Stage:
    saved = saved_students()
    if not saved:
        raise ValueError("No distilled student is saved here yet, so there is no small model to put first. Make one "
                         "with `python -m core distill` (it saves under data/students/), then run this again, or "
                         "name another first stage (e.g. --first gguf-q2_k).")
    base = models.resolve(base_model).key
    of_base = [s for s in saved if s.facts.get("teacher") in (base, base_model)] or saved
    # newest first; a finished run before one stopped part-way (or still training)
    student = sorted(of_base, key=lambda s: not s.facts.get("complete"))[0]
    return Stage(STUDENT, student.label, str(student.path), techniques.REFERENCE)


def _technique_stage(name: str, base_model: str) -> Stage | None:
    try:
        technique = techniques.get(name)
    except ValueError:
        return None
    spec = models.resolve(base_model)
    return Stage(name, f"{spec.label} · {technique.label}", base_model, name)


def _model_stage(name: str) -> Stage | None:
    try:
        spec = models.resolve(name)
    except ValueError:
        return None
    return Stage(name, f"{spec.label} (fp32)", name, techniques.REFERENCE)


def resolve_stage(name: str, base_model: str = models.DEFAULT_MODEL) -> Stage:
    """'student', a technique of the base model, or another model in full precision; refused in words otherwise."""
    name = (name or "").strip()
    if name == STUDENT:
        return _student(base_model)
    stage = _technique_stage(name, base_model) or _model_stage(name)
    if stage is None:
        bundled = ", ".join(k for k, s in models.BUNDLED.items() if not s.for_tests)
        raise ValueError(f"Unknown stage {name!r}: name 'student' (the newest distilled student), a technique of "
                         f"{base_model} ({', '.join(techniques.TECHNIQUES)}), or a model in fp32 ({bundled}, or a "
                         "checkpoint folder).")
    return stage


def check_stage(stage: Stage, device: str = "cpu") -> None:
    """Refuses, before anything loads, a model that is not installed or a technique that cannot run here."""
    spec = models.resolve(stage.model)
    if not models.is_available(spec):
        raise ValueError(f"{spec.label} is not installed here, so the stage {stage.name!r} cannot run: "
                         f"{spec.install_hint or 'install it first'}.")
    technique = techniques.get(stage.technique)
    if (reason := runtimes.why_not(technique, technique.runtime, device)) is not None:
        raise ValueError(f"The stage {stage.name!r} cannot run here: {reason}")


def load_stage(stage: Stage, threads: int, say: Report = lambda f, m: None, device: str = "cpu"):
    """(runner, tokenizer): the stage's variant on its technique's own runtime, read with its model's tokenizer."""
    checkpoint = models.prepare(models.resolve(stage.model), lambda m: say(0.0, m))
    tokenizer = models.load_tokenizer(checkpoint)
    technique = techniques.get(stage.technique)
    runner = runtimes.load(technique, technique.runtime, checkpoint, device, threads, lambda m: say(0.0, m))
    return runner, tokenizer


# ---------------------------------------------------------------- one measured cascade


@dataclass(frozen=True)
class ModelCascadeSettings:
    first: str = STUDENT  # the small model, asked first
    second: str = techniques.REFERENCE  # the large model, asked when the first is unsure
    task: str = "mc"
    data: str = ""  # the user's file in the task's format; "" = the bundled test set
    model: str = models.DEFAULT_MODEL  # the base model whose techniques (fp32, gguf-q2_k, ...) the stages name
    max_items: int = 0  # the first N items only (0 = all)
    threads: int = 2
    hardware: str = "laptop-cpu"  # price preset for $ per 1,000 requests
    usd_per_hour: float | None = None  # overrides the preset's price
    thresholds: tuple[float, ...] = ()  # () = an even grid plus every confidence seen
    shots: int | None = None  # worked examples before each routing prompt (None = ROUTING_SHOTS; MC: none)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"Unknown task {self.task!r}; choose from {', '.join(TASKS)}.")
        if self.max_items < 0:
            raise ValueError(f"--max-items must be 0 (all items) or more, got {self.max_items}.")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}.")
        for t in self.thresholds:
            curve.check_threshold(t)
        shots_for(self.task, self.shots)
        self.preset_price()  # an unknown preset or a negative price is refused here

    def preset_price(self) -> float:
        preset = cost.get_preset(self.hardware)
        return (preset if self.usd_per_hour is None else cost.with_price(preset, self.usd_per_hour)).usd_per_hour


def check_request(settings: ModelCascadeSettings) -> tuple[Stage, Stage, Task]:
    """Everything that can be refused before a model loads or a file is written."""
    first, second = resolve_stage(settings.first, settings.model), resolve_stage(settings.second, settings.model)
    if (first.model, first.technique) == (second.model, second.technique):
        raise ValueError(f"The two stages are the same model ({first.label}): a cascade needs a smaller first model "
                         "and a larger second one.")
    check_stage(first)
    check_stage(second)
    return first, second, load_task(settings.task, settings.data, settings.max_items, settings.shots)


def measure_stages(stages: Sequence[Stage], items: Sequence[Item], threads: int, say: Report,
                   stop: Callable[[], bool]) -> list[list[StageAnswer]]:
    """Each stage loads, scores every item, and is closed before the next loads."""
    out = []
    for i, stage in enumerate(stages):
        part = lambda f, m, i=i: say((i + f) / len(stages), m)  # noqa: E731
        part(0.0, f"loading {stage.label}")
        runner, tokenizer = load_stage(stage, threads, part)
        try:
            out.append(score_stage(runner, tokenizer, items, part, stop, stage.label))
        finally:
            runner.close()
            benchmark.release_memory()
    return out


def run_model_cascade(settings: ModelCascadeSettings, report: Report | None = None,
                      should_stop: Callable[[], bool] | None = None) -> CascadeResult:
    """Both stages on every item of the task, on the CPU at `threads` threads, and the curve that follows."""
    say, stop = report or (lambda f, m: None), should_stop or (lambda: False)
    first, second, task = check_request(settings)
    before = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        env = benchmark.environment("cpu", settings.threads)
        first_answers, second_answers = measure_stages((first, second), task.items, settings.threads, say, stop)
    finally:
        torch.set_num_threads(before)
    outcomes = outcomes_of(task.items, first_answers, second_answers)
    price = settings.preset_price()
    result = curve.build_result(
        "model", task.name, first.label + task.shots_words, second.label + task.shots_words, CONFIDENCE, outcomes, price, settings.hardware,
        env.provenance(), run_id=uuid.uuid4().hex[:12], model=models.resolve(settings.model).key,
        settings={**asdict(settings), "task_file": task.path, "shots_used": task.shots, "first_stage": asdict(first),
                  "second_stage": asdict(second), "device": "cpu",
                  "timing": "wall ms to score one item's choices, each item once per stage after one warm-up item"})
    if settings.thresholds:
        result = replace(result, points=[asdict(p) for p in curve.curve(outcomes, price, settings.thresholds)])
    say(1.0, "done")
    return result


# ---------------------------------------------------------------- reading the curve


@dataclass(frozen=True)
class Verdict:
    first: CascadePoint  # the small model alone
    second: CascadePoint  # the large model alone
    best: CascadePoint | None  # the cheapest threshold within a point of the large model alone, if any
    winners: tuple[CascadePoint, ...]  # thresholds that beat both ends (curve.beats_both_ends)
    most_accurate: CascadePoint  # the most accurate threshold (the cheapest among equals)

    @property
    def beats_both_ends(self) -> bool:
        return bool(self.winners)


def verdict(points: Sequence[CascadePoint]) -> Verdict:
    first, second = curve.ends(points)
    cascade = [p for p in points if p.role == "cascade"]
    if not cascade:
        raise ValueError("The curve has no cascade point: give at least one threshold.")
    top = max(cascade, key=lambda p: (p.accuracy, -p.usd_per_1k_requests))
    return Verdict(first, second, curve.best_point(points), tuple(curve.winning_points(points)), top)
