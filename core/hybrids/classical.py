"""A classical classifier in front of an LLM: TF-IDF and logistic regression answer the requests they are sure of.

On a routing task (a prompt -> one label out of a few), a linear model over word and character n-grams trains in
seconds on the training split and answers in well under a millisecond. Its confidence is its predicted
probability for its own answer; below a threshold, the request goes to an LLM: the base model few-shot, the
LoRA-tuned model the lab saved for the task, or a GGUF variant of the base model on llama.cpp. Both stages answer
and are timed on every test item once (core.hybrids.curve turns that into every threshold's point).

The LLM stage runs through the runtime seam (core.runtimes): greedy, one request at a time, stopping once its
first word is complete (a deployment would stop there too: only the first word is read as the answer).
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import sklearn
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline, make_union

from core import models, runtimes, techniques
from core.hybrids import curve
from core.measure import benchmark, cost
from core.models.saved import SavedMerged, saved_merged
from core.paths import Stopped
from core.runtimes.llamacpp import llama_cpp_problem
from core.techniques.lora import (
    BUNDLED_TASKS,
    Example,
    check_labels,
    load_examples,
    load_task,
    normalise,
    training_key,
)

Report = Callable[[float, str], None]
FIRST_STAGE = "TF-IDF (words 1-2, characters 2-5) + logistic regression"
CONFIDENCE = "the classifier's predicted probability for its own answer"
SECOND_STAGES = ("fp32", "lora", "gguf-<quant>")  # the base model few-shot, the LoRA-tuned one, a GGUF variant
SHOTS_RANGE = (0, 20)  # worked examples put before the question for the base model (20 is ~1,000 tokens)
MAX_SHARE_ESCALATED = 0.30  # the issue's bar: the best cascade sends at most this share of requests to the LLM
REGULARISATION_C = 10.0  # chosen by 5-fold cross-validation on the training split only (0.82 vs 0.78 at C=1)
WARMUP_ITEMS = 1  # answered before the timed pass by each stage, so no lazy first-call setup is timed


# ---------------------------------------------------------------- settings and the task


@dataclass(frozen=True)
class ClassicalSettings:
    second: str = "fp32"  # "fp32" (base model few-shot), "lora" (the saved LoRA-tuned model), "gguf-<quant>"
    task: str = "support-routing"  # a bundled task; ignored when files are given
    train_file: str = ""  # the user's own task: train and test files, or one data file split 80/20 (as `lora`)
    test_file: str = ""
    data_file: str = ""
    shots: int = 5  # few-shot examples for the base model (fp32 and GGUF), one per label in turn; LoRA gets none
    seed: int = 0  # picks the shots and splits a data file (the same split `python -m core lora --data` uses)
    threads: int = 2
    model: str = models.DEFAULT_MODEL
    hardware_preset: str = "laptop-cpu"
    usd_per_hour: float | None = None  # None = the preset's price
    threshold: float | None = None  # an operating point to report as well; None = only the curve

    def __post_init__(self) -> None:
        if not (self.second in ("fp32", "lora") or self.second.startswith("gguf-")):
            raise ValueError(f"Unknown second stage {self.second!r}; choose one of {', '.join(SECOND_STAGES)} "
                             "(e.g. gguf-q4_k_m).")
        lo, hi = SHOTS_RANGE
        if not (isinstance(self.shots, int) and lo <= self.shots <= hi):
            raise ValueError(f"shots must be a whole number from {lo} to {hi}, got {self.shots!r}")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if bool(self.train_file) != bool(self.test_file):
            raise ValueError("Give both --train and --test (or one --data file to split), not only one of them.")
        if self.data_file and self.train_file:
            raise ValueError("Give either --data (split into train and test) or --train and --test, not both.")
        if self.threshold is not None:
            curve.check_threshold(self.threshold)
        preset = cost.get_preset(self.hardware_preset)  # a ValueError naming the presets there are
        if self.usd_per_hour is not None:
            cost.with_price(preset, self.usd_per_hour)  # a ValueError for a negative or non-finite price

    @property
    def price_usd_per_hour(self) -> float:
        preset = cost.get_preset(self.hardware_preset)
        return preset.usd_per_hour if self.usd_per_hour is None else float(self.usd_per_hour)

    @property
    def task_name(self) -> str:
        return Path(self.train_file or self.data_file).name if (self.train_file or self.data_file) else self.task


@dataclass(frozen=True)
class Task:
    name: str
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    labels: tuple[str, ...]  # the normalised labels the training split teaches


def _existing(path: str, flag: str) -> Path:
    if not Path(path).is_file():
        raise ValueError(f"{flag}: no such file: {path}. Give a JSONL file of {{\"prompt\", \"completion\"}} lines.")
    return Path(path)


def load_cascade_task(settings: ClassicalSettings) -> Task:
    """The train and test examples, refused when a classifier could not learn or be scored on them."""
    if settings.train_file:
        train = load_examples(_existing(settings.train_file, "--train"))
        test = load_examples(_existing(settings.test_file, "--test"))
        check_labels(train)
    elif settings.data_file:
        train, test = load_task(None, _existing(settings.data_file, "--data"), seed=settings.seed)
    else:
        if settings.task not in BUNDLED_TASKS:
            raise ValueError(f"Unknown task {settings.task!r}; bundled tasks: {', '.join(BUNDLED_TASKS)}, "
                             "or give --train and --test files.")
        train, test = load_task(settings.task)
    by_word: dict[str, set[str]] = {}
    for e in train:
        by_word.setdefault(normalise(e.completion), set()).add(e.completion)
    if clash := [sorted(v) for v in by_word.values() if len(v) > 1]:
        raise ValueError(f"The labels {clash[0]} read as the same answer (an LLM's answer is read by its first word, "
                         "lowercased); give labels that differ in their first word.")
    if unseen := sorted({e.completion for e in test} - {e.completion for e in train}):
        raise ValueError(f"The test split has labels the training split never shows: {unseen}. The classifier can "
                         "only answer labels it was trained on; add examples of them to the training file.")
    return Task(settings.task_name, tuple(train), tuple(test), tuple(sorted(by_word)))


# ---------------------------------------------------------------- the second stage, checked before it loads


@dataclass(frozen=True)
class SecondPlan:
    key: str  # the technique that runs it: "fp32" or a gguf-* key
    label: str  # in words, for the result ("SmolLM2-135M-Instruct fp32, 5-shot")
    shots: int
    merged: SavedMerged | None  # the LoRA-tuned checkpoint, where the second stage is "lora"


def find_lora(settings: ClassicalSettings, model_key: str) -> SavedMerged:
    """The newest merged LoRA fine-tune of this model trained on this very data, matched by the training file's
    content (lora.training_key), not its name; a fine-tune saved before content keys matches a bundled task by name."""
    files = bool(settings.train_file or settings.data_file)
    wanted = training_key(settings.task, settings.data_file or None, settings.seed, settings.train_file or None)
    for merged in saved_merged():
        if merged.facts.get("model") != model_key:
            continue
        if merged.facts.get("training_sha256") == wanted or (
                "training_sha256" not in merged.facts and not files and merged.facts.get("task") == settings.task):
            return merged
    how = f"--data {settings.data_file}" if settings.data_file else f"--task {settings.task}"
    raise ValueError(f"No LoRA-tuned {model_key} is saved for the task {settings.task_name!r}: train one first "
                     f"with `python -m core lora --model {model_key} {how}` (a few minutes on a CPU).")


def plan_second(settings: ClassicalSettings) -> SecondPlan:
    spec = models.resolve(settings.model)  # a ValueError for a model the lab does not know
    if not models.is_available(spec):
        raise ValueError(f"The model {spec.key} is not installed here: {spec.install_hint}")
    if settings.second == "lora":
        merged = find_lora(settings, spec.key)
        return SecondPlan(techniques.REFERENCE, f"{merged.facts.get('label', 'LoRA')} ({spec.label}), zero-shot", 0,
                          merged)
    if settings.second == "fp32":
        return SecondPlan(techniques.REFERENCE, f"{spec.label} fp32, {settings.shots}-shot", settings.shots, None)
    technique = techniques.get(settings.second)  # a ValueError naming the techniques there are
    if technique.family != "gguf":
        raise ValueError(f"{settings.second!r} is not a GGUF variant; choose fp32, lora or a gguf-* technique.")
    if (problem := llama_cpp_problem()) is not None:
        raise ValueError(problem)
    return SecondPlan(technique.key, f"{spec.label} {technique.key} on llama.cpp, {settings.shots}-shot",
                      settings.shots, None)


def check_request(settings: ClassicalSettings) -> tuple[Task, SecondPlan]:
    """Everything that can be refused before a model loads or a line is written."""
    return load_cascade_task(settings), plan_second(settings)


# ---------------------------------------------------------------- the first stage


def train_classifier(train: Sequence[Example]) -> Pipeline:
    """Word n-grams carry the topic; character n-grams survive typos ("pasword", "adress")."""
    features = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True))
    clf = make_pipeline(features, LogisticRegression(C=REGULARISATION_C, max_iter=2000))
    return clf.fit([e.prompt for e in train], [normalise(e.completion) for e in train])


@dataclass(frozen=True)
class Answer:
    text: str  # the normalised answer: a label, or whatever the LLM said first ("" for nothing)
    ms: float  # wall time of this one request, as served alone
    confidence: float = 1.0  # the classifier's probability for its answer (an LLM's is not read)


def classify(clf: Pipeline, prompts: Sequence[str]) -> list[Answer]:
    """One request at a time, as a service would answer them (a batch would hide the per-request cost)."""
    for p in prompts[:WARMUP_ITEMS]:
        clf.predict_proba([p])
    out = []
    with benchmark.timing_phase():
        for p in prompts:
            t0 = time.perf_counter()
            probs = clf.predict_proba([p])[0]  # [labels]
            best = int(probs.argmax())
            out.append(Answer(str(clf.classes_[best]), (time.perf_counter() - t0) * 1e3, float(probs[best])))
    return out


# ---------------------------------------------------------------- the second stage


def pick_shots(train: Sequence[Example], k: int, seed: int = 0) -> list[Example]:
    """k examples, one per label in turn (labels in sorted order), each drawn with a fixed seed."""
    rng = random.Random(seed)
    by_label: dict[str, list[Example]] = {}
    for e in train:
        by_label.setdefault(e.completion, []).append(e)
    pools = {label: rng.sample(items, len(items)) for label, items in sorted(by_label.items())}
    order = sorted(pools)
    shots = []
    for i in range(k):
        pool = pools[order[i % len(order)]]
        if pool:
            shots.append(pool.pop())
    return shots


def few_shot_prompt(shots: Sequence[Example], prompt: str) -> str:
    """Worked examples in the task's own format, then the question (no chat template: the LoRA was trained so)."""
    return "".join(f"{s.prompt} {s.completion}\n\n" for s in shots) + prompt


def answer_tokens(tokenizer, labels: Sequence[str]) -> int:
    """Enough new tokens for the longest label after a space, plus one to see that the word ended."""
    return max(len(tokenizer(" " + label, add_special_tokens=False)["input_ids"]) for label in labels) + 1


def _first_word_done(text: str) -> bool:
    head = text.lstrip()
    return bool(head) and (len(head.split()) > 1 or head[-1].isspace() or head[-1] in ".,:;!?")


def ask(runner, tokenizer, prompt: str, max_new_tokens: int, stop_ids: set[int]) -> Answer:
    """One greedy answer, stopped at end of text or once its first word is complete; timed end to end."""
    t0 = time.perf_counter()
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])  # [1, T]
    tokens: list[int] = []
    for token, _own_s in runner.stream(ids, max_new_tokens):
        if token in stop_ids:
            break
        tokens.append(token)
        if _first_word_done(tokenizer.decode(tokens, skip_special_tokens=True)):
            break
    text = normalise(tokenizer.decode(tokens, skip_special_tokens=True))
    return Answer(text, (time.perf_counter() - t0) * 1e3)


def llm_answers(runner, tokenizer, prompts: Sequence[str], labels: Sequence[str], say: Report | None = None,
                stop: Callable[[], bool] | None = None) -> list[Answer]:
    """Each prompt answered once, one at a time; an answer outside `labels` is kept as said (it counts as wrong)."""
    say, stop = say or (lambda f, m: None), stop or (lambda: False)
    n_new = answer_tokens(tokenizer, labels)
    stop_ids = {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
    for p in prompts[:WARMUP_ITEMS]:
        ask(runner, tokenizer, p, n_new, stop_ids)
    out = []
    with benchmark.timing_phase():  # the presenter's job panel pauses meanwhile
        for i, p in enumerate(prompts):
            if stop():
                raise Stopped(f"Stopped after {i} of {len(prompts)} items; nothing was written.")
            say(i / len(prompts), f"LLM: item {i + 1}/{len(prompts)}")
            out.append(ask(runner, tokenizer, p, n_new, stop_ids))
    return out


def load_second(plan: SecondPlan, settings: ClassicalSettings, say: Report):
    """(runner, tokenizer) of the second stage, through the runtime seam."""
    spec = models.resolve(settings.model)
    checkpoint = plan.merged.path if plan.merged else models.prepare(spec)
    technique = techniques.get(plan.key)
    runner = runtimes.load(technique, technique.runtime, checkpoint, "cpu", settings.threads, lambda m: say(0.0, m))
    return runner, models.load_tokenizer(checkpoint)


# ---------------------------------------------------------------- the whole run


def outcomes_of(task: Task, first: Sequence[Answer], second: Sequence[Answer]) -> list[curve.ItemOutcome]:
    return [curve.ItemOutcome(normalise(e.completion), f.text, min(1.0, max(0.0, f.confidence)), f.ms, s.text, s.ms)
            for e, f, s in zip(task.test, first, second)]


def run_classical(settings: ClassicalSettings, report: Report | None = None,
                  should_stop: Callable[[], bool] | None = None) -> curve.CascadeResult:
    """Train the classifier, answer and time every test item with both stages, and build the curve (not saved)."""
    say, stop = report or (lambda f, m: None), should_stop or (lambda: False)
    task, plan = check_request(settings)
    before = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        say(0.0, f"training the classifier on {len(task.train)} examples")
        t0 = time.perf_counter()
        clf = train_classifier(task.train)
        train_s = time.perf_counter() - t0
        first = classify(clf, [e.prompt for e in task.test])
        runner, tokenizer = load_second(plan, settings, say)
        shots = pick_shots(task.train, plan.shots, settings.seed)
        prompts = [few_shot_prompt(shots, e.prompt) for e in task.test]
        try:
            second = llm_answers(runner, tokenizer, prompts, task.labels, lambda f, m: say(0.1 + 0.9 * f, m), stop)
        finally:
            runner.close()
        env = benchmark.environment("cpu", settings.threads)
    finally:
        torch.set_num_threads(before)
    say(1.0, "done")
    return curve.build_result(
        "classical", task.name, FIRST_STAGE, plan.label, CONFIDENCE, outcomes_of(task, first, second),
        settings.price_usd_per_hour, settings.hardware_preset, env.provenance(), run_id=uuid.uuid4().hex[:12],
        model=models.resolve(settings.model).key,
        settings={**asdict(settings), "second_technique": plan.key, "shots_used": len(shots),
                  "shot_labels": [s.completion for s in shots], "classifier_train_s": train_s,
                  "lora_checkpoint": str(plan.merged.path) if plan.merged else "",
                  "labels": list(task.labels), "n_train": len(task.train), "sklearn_version": sklearn.__version__,
                  "timing": "wall ms per request, one at a time, after one warm-up request per stage; the LLM "
                            "stops at end of text or once its first word is complete",
                  "decoding": "greedy"})


# ---------------------------------------------------------------- the issue's bar


@dataclass(frozen=True)
class Verdict:
    meets: bool
    best: curve.CascadePoint | None  # the cheapest point within a point of the LLM alone
    classifier: curve.CascadePoint
    llm: curve.CascadePoint
    best_under_share: curve.CascadePoint  # the most accurate point that sends at most MAX_SHARE_ESCALATED on
    max_share_escalated: float = MAX_SHARE_ESCALATED
    max_drop_points: float = curve.MAX_ACCURACY_DROP_POINTS


def verdict(points: Sequence[curve.CascadePoint]) -> Verdict:
    """Does some threshold keep accuracy within 1 point of the LLM alone while sending at most 30% to it?"""
    first, second = curve.ends(points)
    best = curve.best_point(points)
    under = [p for p in points if p.role == "cascade" and p.share_escalated <= MAX_SHARE_ESCALATED + 1e-12]
    best_under = max(under, key=lambda p: (p.accuracy, -p.usd_per_1k_requests))  # threshold 0 is always there
    meets = best_under.accuracy >= second.accuracy - curve.MAX_ACCURACY_DROP_POINTS / 100 - 1e-12
    return Verdict(meets, best, first, second, best_under)
