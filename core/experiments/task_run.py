"""Your own task, judged: every chosen variant answers every prompt of a task file, and each answer is checked.

Answers come from the Arena's generation path (core/experiments/arena.py `build_variant`, the variant's
Runner.stream): the same chat template (models.chat_prompt_ids), greedy decoding, the same token limit and the same
end-of-turn stop for every variant, on the runtime each variant runs on (transformers or llama.cpp). Each answer's
wall time (prompt pass and decode) is kept, so a page can price 1,000 answers at any hourly rate. What the answers
mean (pass rates, flips, the paired test) is computed from the stored result by core/views/task.py.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from core import models, runtimes, techniques
from core.experiments import arena
from core.measure import benchmark, taskfile
from core.paths import ASSETS, Stopped, data_dir
from core.runtimes.llamacpp import CONTEXT_TOKENS

Report = Callable[[float, str], None]
EXAMPLE_TASK = ASSETS / "tasks" / "support_desk_task.jsonl"
NEW_TOKENS_RANGE = (1, 512)
END_OF_TURN = "<|im_end|>"  # the chat models' end-of-turn token, where it is not the tokenizer's eos


@dataclass(frozen=True)
class TaskSettings:
    techniques: tuple[str, ...] = ("fp32", "gguf-q8_0", "gguf-q4_k_m", "gguf-q2_k")
    task_file: str = str(EXAMPLE_TASK)
    new_tokens: int = 32  # at most, per answer; every variant stops at its end-of-turn token too
    threads: int = 2
    task_name: str = ""  # the file's name as the user knows it (an upload is kept under its hash); "" = the file's own

    def __post_init__(self):
        lo, hi = NEW_TOKENS_RANGE
        if not lo <= self.new_tokens <= hi:
            raise ValueError(f"the answer's token limit must be between {lo} and {hi}, got {self.new_tokens}")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if not self.techniques:
            raise ValueError("no variant chosen; pick at least one (e.g. fp32)")
        if len(set(self.techniques)) != len(self.techniques):
            raise ValueError(f"a variant is listed twice: {', '.join(self.techniques)}")

    @property
    def reference(self) -> str:
        """The variant every other is compared with: the registry's reference if chosen, else the first."""
        return arena.reference_of(self.techniques)


def check_request(settings: TaskSettings) -> taskfile.Task:
    """Everything refused before a model loads: unknown variants, variants this machine cannot run, the task file."""
    for key in settings.techniques:
        technique = techniques.get(key)  # ValueError naming the known keys
        if why := runtimes.why_not(technique, technique.runtime, "cpu"):
            raise ValueError(f"{technique.label}: {why}")
    return taskfile.load_task(settings.task_file)


def context_tokens(checkpoint: Path, runtime: str) -> int:
    """The most tokens (prompt and answer) a variant on `runtime` holds: llama.cpp's KV cache, else the model's."""
    if runtime == "llama.cpp":
        return CONTEXT_TOKENS
    config = json.loads((checkpoint / "config.json").read_text())
    return int(config.get("max_position_embeddings") or CONTEXT_TOKENS)


def check_context(task: taskfile.Task, settings: TaskSettings, checkpoint: Path, tokenizer) -> list[torch.Tensor]:
    """Every prompt as the model reads it ([1, T] ids); a ValueError naming the first prompt that, with its answer,
    does not fit the context of a chosen variant's runtime (refused before any variant loads)."""
    prompt_ids = [models.chat_prompt_ids(tokenizer, item.prompt) for item in task.items]
    for runtime in dict.fromkeys(techniques.get(k).runtime for k in settings.techniques):
        if why := taskfile.too_long(task.items, [int(i.shape[-1]) for i in prompt_ids], settings.new_tokens,
                                    context_tokens(checkpoint, runtime), runtime):
            raise ValueError(f"{task.name}, {why}")
    return prompt_ids


def context_problem(model_name: str, settings: TaskSettings) -> str | None:
    """For a page, before it queues a run: why a prompt does not fit (the model's tokenizer counts it), or None."""
    try:
        task = check_request(settings)
        checkpoint = models.prepare(models.resolve(model_name))
        check_context(task, settings, checkpoint, models.load_tokenizer(checkpoint))
    except ValueError as e:
        return str(e)
    return None


def stop_ids(tokenizer) -> set[int]:
    """Token ids that end an answer: the tokenizer's eos and the chat template's end-of-turn token."""
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TURN)}
    return {int(i) for i in ids if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id}


@dataclass
class TaskRunResult(benchmark.Provenance):
    run_id: str
    created_at: str
    model: str
    task_name: str
    task_file: str
    task_sha256: str
    reference: str  # the technique key flips and paired tests are against
    new_tokens: int
    prompts: list[dict]  # {"id", "prompt", "checks": [words], "line"}, in the file's order
    variants: list[dict]  # {"technique", "label", "runtime", "answers", "passed", "failed", "seconds", "tokens"}
    settings: dict = field(default_factory=dict)


def answer(runner, ids: torch.Tensor, new_tokens: int, stops: set[int]) -> tuple[list[int], float]:
    """One greedy answer (token ids, the end-of-turn token left out) and its wall time in seconds."""
    tokens, t0 = [], time.perf_counter()
    for token, _own_s in runner.stream(ids, new_tokens):
        if token in stops:
            break
        tokens.append(int(token))
    return tokens, time.perf_counter() - t0


def answer_all(runner, task: taskfile.Task, prompt_ids: list[torch.Tensor], tokenizer, new_tokens: int,
               say: Report, stop: Callable[[], bool]) -> dict:
    """Every prompt answered by one variant and checked: the row a result keeps for it."""
    arena.warm_up(runner, prompt_ids[0])
    row = {"answers": [], "passed": [], "failed": [], "seconds": [], "tokens": []}
    stops = stop_ids(tokenizer)
    with benchmark.timing_phase():  # the presenter's job panel pauses meanwhile (ui/panel.py)
        for i, (item, ids) in enumerate(zip(task.items, prompt_ids)):
            if stop():
                raise Stopped(f"Stopped after {i} of {len(task.items)} prompts.")
            say(i / len(task.items), f"prompt {i + 1}/{len(task.items)}: {item.id}")
            tokens, seconds = answer(runner, ids, new_tokens, stops)
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            failed = taskfile.failed_checks(text, item)
            for key, value in (("answers", text), ("passed", not failed), ("failed", failed), ("seconds", seconds),
                               ("tokens", len(tokens))):
                row[key].append(value)
    return row


def run_task(model_name: str = models.DEFAULT_MODEL, settings: TaskSettings | None = None,
             report: Report | None = None, should_stop: Callable[[], bool] | None = None) -> TaskRunResult:
    """Every chosen variant answers every prompt; nothing is kept unless every variant finished."""
    settings = settings or TaskSettings()
    say, stop = report or (lambda f, m: None), should_stop or (lambda: False)
    task = check_request(settings)
    spec = models.resolve(model_name)
    checkpoint = models.prepare(spec)
    tokenizer = models.load_tokenizer(checkpoint)
    prompt_ids = check_context(task, settings, checkpoint, tokenizer)
    before = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    rows = []
    try:
        for n, key in enumerate(settings.techniques):
            technique = techniques.get(key)
            part = (lambda f, m, n=n, label=technique.label:
                    say((n + f) / len(settings.techniques), f"{label}: {m}"))
            part(0.0, "loading")
            runner = runtimes.load(technique, technique.runtime, checkpoint, "cpu", settings.threads,
                                   lambda m: part(0.0, m))
            try:
                row = answer_all(runner, task, prompt_ids, tokenizer, settings.new_tokens, part, stop)
            finally:
                runner.close()
            rows.append({"technique": key, "label": technique.label, "runtime": runner.runtime, **row})
    finally:
        torch.set_num_threads(before)
    say(1.0, "done")
    env = benchmark.environment("cpu", settings.threads)
    return TaskRunResult(
        run_id=uuid.uuid4().hex[:12], created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), model=spec.key,
        task_name=settings.task_name or task.name, task_file=settings.task_file, task_sha256=task.sha256, reference=settings.reference,
        new_tokens=settings.new_tokens,
        prompts=[{"id": i.id, "prompt": i.prompt, "checks": [c.describe() for c in i.checks], "line": i.line}
                 for i in task.items],
        variants=rows, settings={**asdict(settings), "decoding": "greedy", "device": "cpu",
                                 "prompt_format": "the model's chat template, one user turn",
                                 "stop": "end-of-turn token or new_tokens, the same for every variant",
                                 "timing": "wall time per answer: prompt pass and decode"},
        **env.provenance())


def results_path() -> Path:
    return data_dir() / "tasks" / "task_runs.jsonl"
