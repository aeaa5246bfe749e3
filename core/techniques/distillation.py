"""Knowledge distillation: a smaller student cut from the teacher's own layers, trained to match it.

The student starts as the teacher with some decoder layers removed (DistilBERT initialised its student
from every other teacher layer). Training minimises the temperature-scaled KL divergence between the
teacher's and the student's next-token distributions, optionally mixed with the ordinary language-model
loss, on real text: by default the teacher's own answers to the bundled prompts. The trained student is
then measured like any variant and can serve as the teacher's draft model (see `speculate`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from core import models
from core.measure import benchmark, evaluate
from core.models.saved import checkpoint_name, latest_checkpoint, student_key, student_label, students_dir
from core.paths import ASSETS, Stopped, data_dir

Report = Callable[[float, str], None]
LayerChoice = Literal["spread", "first", "every-other"]
LAYER_CHOICES: tuple[str, ...] = ("spread", "first", "every-other")
PROMPTS = ASSETS / "distill" / "prompts.jsonl"


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class DistillSettings:
    student_layers: int = 15
    layer_choice: LayerChoice = "spread"
    steps: int = 150
    batch_size: int = 4
    seq_len_tokens: int = 256
    learning_rate: float = 3e-4
    warmup_steps: int = 10
    temperature: float = 1.0
    kd_weight: float = 1.0  # share of the KL term; the rest is the ordinary next-token loss
    train_embeddings: bool = False
    heldout_share: float = 0.1
    corpus_answer_tokens: int = 128
    checkpoints: int = 3  # complete, atomic saves during the run (the last one is the final student)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.student_layers < 1:
            raise ValueError(f"The student needs at least 1 layer, got {self.student_layers}.")
        if self.layer_choice not in LAYER_CHOICES:
            raise ValueError(f"layer_choice must be one of {LAYER_CHOICES}, got {self.layer_choice!r}")
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps} and {self.batch_size}.")
        if self.seq_len_tokens < 16:
            raise ValueError(f"seq_len_tokens must be at least 16, got {self.seq_len_tokens}.")
        if self.learning_rate <= 0 or self.warmup_steps < 0:
            raise ValueError(f"need learning_rate > 0 and warmup_steps >= 0, got {self.learning_rate}, {self.warmup_steps}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}.")
        if not 0 <= self.kd_weight <= 1:
            raise ValueError(f"kd_weight is a share between 0 and 1, got {self.kd_weight}.")
        if not 0 < self.heldout_share < 0.5:
            raise ValueError(f"heldout_share must be between 0 and 0.5, got {self.heldout_share}.")
        if self.checkpoints < 1 or self.corpus_answer_tokens < 8:
            raise ValueError("need at least one checkpoint and corpus answers of at least 8 tokens.")


# ---------------------------------------------------------------- the student's shape


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder's stack of blocks (`model.model.layers` in Llama, Qwen, Gemma, SmolLM ...)."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise models.ModelError(f"Cannot find the decoder layers of {type(model).__name__}; distillation here needs "
                                "a decoder whose blocks are in `model.model.layers` (Llama, Qwen2, Gemma, SmolLM...).")
    return layers


def pick_layers(teacher_layers: int, student_layers: int, how: LayerChoice = "spread") -> list[int]:
    """Which teacher layers the student keeps, in order.

    spread: evenly spaced, first and last kept (the last layer shapes the output the most);
    every-other: 0, 2, 4 ... as DistilBERT did; first: the bottom of the stack.
    """
    if not 1 <= student_layers < teacher_layers:
        raise ValueError(f"The student must have between 1 and {teacher_layers - 1} layers (the teacher has "
                         f"{teacher_layers}); got {student_layers}.")
    if how == "first":
        return list(range(student_layers))
    if how == "every-other":
        kept = list(range(0, teacher_layers, 2))[:student_layers]
        if len(kept) < student_layers:
            raise ValueError(f"every-other gives at most {len(kept)} layers of {teacher_layers}; pick 'spread'.")
        return kept
    if student_layers == 1:
        return [teacher_layers - 1]
    return [round(i * (teacher_layers - 1) / (student_layers - 1)) for i in range(student_layers)]


def make_student(teacher: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    """A copy of the teacher holding only the layers in `keep`; embeddings, final norm and head are copied too."""
    student = copy.deepcopy(teacher)
    layers = decoder_layers(student)
    student.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(student.model.layers):
        for module in layer.modules():  # the KV cache is indexed by each attention module's layer_idx
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = student.config
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(layers):
        config.layer_types = [layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    return student.eval()


@dataclass(frozen=True)
class StudentPlan:
    """What a student of a given depth will be, from the teacher's config alone (nothing loaded)."""
    teacher_layers: int
    student_layers: int
    kept_layers: list[int]
    teacher_params: int
    student_params: int
    teacher_mb_fp32: float
    student_mb_fp32: float
    expected_speedup: float  # bytes read per token, teacher / student: the bound for bandwidth-bound decode

    @property
    def params_pct(self) -> float:
        return 100 * self.student_params / self.teacher_params


@lru_cache(maxsize=4)
def meta_model(checkpoint: Path) -> torch.nn.Module:
    """The model's structure from its config, with no memory behind the weights; built once per checkpoint
    (the Distill page asks for it on every slider move). Read it, never change it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint))


def plan(checkpoint: Path, student_layers: int, how: LayerChoice = "spread") -> StudentPlan:
    teacher = meta_model(checkpoint)
    n = len(decoder_layers(teacher))
    keep = pick_layers(n, student_layers, how)
    per_layer = [sum(p.numel() for p in layer.parameters()) for layer in decoder_layers(teacher)]
    total = sum(p.numel() for p in teacher.parameters())  # tied embeddings counted once
    student = total - sum(per_layer) + sum(per_layer[i] for i in keep)
    return StudentPlan(n, len(keep), keep, total, student, total * 4 / 1e6, student * 4 / 1e6,
                       _read_bytes(teacher, per_layer, range(n)) / _read_bytes(teacher, per_layer, keep))


def _read_bytes(model, per_layer: list[int], keep) -> float:
    """Parameters one decoded token reads: the kept layers, the final norm and the output head
    (the embedding lookup reads one row, but a tied head reads the whole table)."""
    head = model.get_output_embeddings().weight.numel()
    norm = sum(p.numel() for p in model.model.norm.parameters()) if hasattr(model.model, "norm") else 0
    return sum(per_layer[i] for i in keep) + head + norm


# ---------------------------------------------------------------- corpus


def load_prompts(path: Path = PROMPTS) -> list[dict]:
    rows = [row for _, row in evaluate.jsonl_rows(path, '{"id": "...", "prompt": "..."}')]
    if not rows or not all(isinstance(r, dict) and r.get("prompt") for r in rows):
        raise ValueError(f"{path} must hold JSON lines with a non-empty 'prompt'.")
    return rows


def is_heldout(key: str, share: float) -> bool:
    """A stable split by name (not by position), so adding prompts never moves old ones across it."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


@dataclass
class Corpus:
    train: list[list[int]]  # token id sequences
    heldout: list[list[int]]
    source: str
    texts_sample: list[str] = field(default_factory=list)

    @property
    def train_tokens(self) -> int:
        return sum(len(s) for s in self.train)

    @property
    def heldout_tokens(self) -> int:
        return sum(len(s) for s in self.heldout)


def corpus_from_file(path: Path, tokenizer, heldout_share: float) -> Corpus:
    """A .txt file (split at blank lines) or a .jsonl file of {"text": ...} lines; the held-out share is never trained on."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Corpus file not found: {path}")
    if path.suffix == ".jsonl":
        texts = []
        for where, row in evaluate.jsonl_rows(path, '{"text": "..."}'):
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f'{where}: expected {{"text": "..."}}.')
            texts.append(row["text"])
    else:
        try:
            body = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path.name} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8.") from None
        texts = body.split("\n\n")
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"{path.name} is empty: give a UTF-8 text file (paragraphs split by blank lines) "
                         'or JSONL of {"text": ...} lines.')
    seqs = [(f"{i}:{t[:40]}", tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]) for i, t in enumerate(texts)]
    train = [s for k, s in seqs if not is_heldout(k, heldout_share)]
    heldout = [s for k, s in seqs if is_heldout(k, heldout_share)]
    if len(seqs) >= 2 and not heldout:  # a short file: hold out its last text rather than nothing
        train, heldout = train[:-1], train[-1:]
    corpus = Corpus(train, heldout, str(path), texts[:3])
    if corpus.train_tokens < 256 or not heldout:
        raise ValueError(f"{path.name} holds {sum(len(s) for _, s in seqs)} tokens in {len(texts)} texts; give at least "
                         "two texts and a few hundred words so that some can be held out.")
    return corpus


def chat_text(tokenizer, prompt: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return prompt + "\n"


def corpus_cache_path(teacher_key: str, answer_tokens: int) -> Path:
    tag = hashlib.sha256(f"{teacher_key}|{evaluate.file_sha256(PROMPTS)}|{answer_tokens}".encode()).hexdigest()[:12]
    return data_dir() / "distill" / f"teacher-answers-{tag}.jsonl"


@torch.inference_mode()
def teacher_answers(teacher, tokenizer, teacher_key: str, answer_tokens: int, device: str, report: Report,
                    stop: Callable[[], bool], batch: int = 24) -> list[dict]:
    """The teacher's greedy answers to every bundled prompt: generated once, batched, cached.

    Finished batches are appended to a partial file as they complete, so a stopped run resumes where it was.
    """
    final = corpus_cache_path(teacher_key, answer_tokens)
    if final.is_file():
        return [json.loads(line) for line in final.read_text().splitlines()]
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_suffix(".partial")
    done = {}
    if partial.is_file():
        for line in partial.read_text().splitlines():
            try:
                row = json.loads(line)
                done[row["id"]] = row
            except (json.JSONDecodeError, KeyError):
                break  # a line cut by a kill: everything before it is good
    prompts = load_prompts()
    todo = sorted((p for p in prompts if p["id"] not in done), key=lambda p: len(p["prompt"]))  # less padding
    tokenizer.padding_side = "left"
    try:
        with partial.open("a") as out:
            for start in range(0, len(todo), batch):
                if stop():
                    raise Stopped(f"Stopped while the teacher wrote the corpus ({len(done)} of {len(prompts)} answers kept for next time).")
                chunk = todo[start : start + batch]
                texts = [chat_text(tokenizer, p["prompt"]) for p in chunk]
                enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                gen = teacher.generate(**enc, max_new_tokens=answer_tokens, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)
                answers = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                for p, text, answer in zip(chunk, texts, answers):
                    row = {"id": p["id"], "prompt": p["prompt"], "text": text + answer.strip() + tokenizer.eos_token}
                    out.write(json.dumps(row) + "\n")
                    done[p["id"]] = row
                out.flush()
                report(len(done) / len(prompts), f"teacher answers: {len(done)}/{len(prompts)}")
    finally:
        tokenizer.padding_side = "right"
    rows = [done[p["id"]] for p in prompts]
    done_file = final.with_suffix(".tmp")  # written whole, then renamed: a crash never leaves a cut cache
    done_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done_file.replace(final)
    partial.unlink(missing_ok=True)
    return rows


def corpus_from_answers(rows: list[dict], tokenizer, heldout_share: float) -> Corpus:
    seqs = [(r["id"], tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in rows]
    return Corpus([s for k, s in seqs if not is_heldout(k, heldout_share)],
                  [s for k, s in seqs if is_heldout(k, heldout_share)],
                  f"teacher's answers to {len(rows)} bundled prompts ({PROMPTS.name})", [r["text"] for r in rows[:3]])


def pack(sequences: list[list[int]], seq_len: int) -> torch.Tensor:
    """Concatenate sequences (each ends with EOS) and cut into [N, seq_len] rows: no padding, no wasted compute.
    The teacher and the student see the same packed context, so the target stays consistent across joins."""
    stream = [t for s in sequences for t in s]
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"The corpus holds {len(stream)} training tokens, fewer than one sequence of {seq_len}.")
    return torch.tensor(stream[: n * seq_len]).view(n, seq_len)


# ---------------------------------------------------------------- loss and training


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, input_ids: torch.Tensor,
                 temperature: float, kd_weight: float) -> torch.Tensor:
    """kd_weight * T^2 * KL(teacher_T || student_T) + (1 - kd_weight) * next-token cross-entropy.

    T^2 keeps the KL term's gradients the same size whatever the temperature (Hinton et al., 2015).
    The cross-entropy is computed only when it counts: over a 49k-token vocabulary it is not free.
    """
    t = temperature
    s = F.log_softmax(student_logits.float() / t, dim=-1)
    p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kd = (p.exp() * (p - s)).sum(-1).mean() * t * t
    if kd_weight == 1:
        return kd
    ce = F.cross_entropy(student_logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())
    return kd_weight * kd + (1 - kd_weight) * ce


@dataclass
class TrainLog:
    """Filled as training goes, so a page can draw it live."""
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    heldout: list[tuple[int, float, float]] = field(default_factory=list)  # (step, KL nats/token, top-1) at checkpoints
    tokens_seen: int = 0
    steps_total: int = 0


def lr_at(step: int, settings: DistillSettings) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def trainable_parameters(student: torch.nn.Module, train_embeddings: bool) -> list[torch.nn.Parameter]:
    """Every decoder layer and the final norm; the (tied) token table only on request: freezing it makes each
    step cheaper and keeps the student's token space exactly the teacher's, which a speculative draft wants."""
    embeddings = {id(student.get_input_embeddings().weight), id(student.get_output_embeddings().weight)}
    params = []
    for p in student.parameters():
        p.requires_grad_(train_embeddings or id(p) not in embeddings)
        if p.requires_grad:
            params.append(p)
    return params


@torch.inference_mode()
def heldout_divergence(teacher, student, sequences: list[list[int]], device: str, max_tokens: int = 4096,
                       window: int = 512) -> tuple[float, float]:
    """(mean KL(teacher || student) in nats/token, top-1 agreement) over held-out text never trained on."""
    kl_sum, agree, count = 0.0, 0, 0
    for row in pack_for_eval(sequences, window, max_tokens):
        ids = row.unsqueeze(0).to(device)
        p = F.log_softmax(teacher(input_ids=ids).logits[0].float(), -1)
        q = F.log_softmax(student(input_ids=ids).logits[0].float(), -1)
        kl_sum += float((p.exp() * (p - q)).sum())
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        count += ids.shape[1]
    return kl_sum / count, agree / count


def pack_for_eval(sequences: list[list[int]], window: int, max_tokens: int) -> list[torch.Tensor]:
    stream = [t for s in sequences for t in s][:max_tokens]
    return [torch.tensor(stream[i : i + window]) for i in range(0, len(stream), window) if len(stream[i : i + window]) >= 2]


def train_student(student, teacher, corpus: Corpus, settings: DistillSettings, device: str, report: Report,
                  stop: Callable[[], bool], log: TrainLog, save: Callable[[int], None]) -> TrainLog:
    """AdamW over packed batches of the training part; `save(step)` is called at each checkpoint."""
    rows = pack(corpus.train, settings.seq_len_tokens)
    params = trainable_parameters(student, settings.train_embeddings)
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.empty(0, dtype=torch.long)
    checkpoint_steps = {round(settings.steps * (i + 1) / settings.checkpoints) for i in range(settings.checkpoints)}
    log.steps_total = settings.steps
    teacher.eval()
    student.train()
    for step in range(settings.steps):
        if stop():
            raise Stopped(f"Stopped at step {step} of {settings.steps}.")
        if len(order) < settings.batch_size:  # reshuffle each epoch
            order = torch.cat([order, torch.randperm(len(rows), generator=generator)])
        batch, order = rows[order[: settings.batch_size]].to(device), order[settings.batch_size :]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings)
        t0 = time.perf_counter()
        with torch.no_grad():
            teacher_logits = teacher(input_ids=batch).logits
        loss = distill_loss(student(input_ids=batch).logits, teacher_logits, batch,
                            settings.temperature, settings.kd_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        benchmark.synchronize(device)
        log.step_seconds.append(time.perf_counter() - t0)
        log.losses.append(float(loss.detach()))
        log.tokens_seen += batch.numel()
        report((step + 1) / settings.steps, f"step {step + 1}/{settings.steps}: loss {log.losses[-1]:.3f}")
        if step + 1 in checkpoint_steps:
            student.eval()
            log.heldout.append((step + 1, *heldout_divergence(teacher, student, corpus.heldout, device)))
            save(step + 1)
            student.train()
    student.eval()
    return log


# ---------------------------------------------------------------- saving


def save_checkpoint(student, tokenizer, run_dir: Path, step: int, facts: dict) -> Path:
    """Write a complete checkpoint beside the others in one rename, then drop the older ones.

    A kill at any moment leaves the last complete checkpoint (or two), never a half-written one.
    """
    target = models.save_atomically(run_dir / checkpoint_name(step), student, tokenizer, facts | {"step": step},
                                    facts_file="lab_student.json")
    for old in run_dir.glob("step-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


# ---------------------------------------------------------------- one run, end to end


@dataclass
class DistillResult(benchmark.Provenance):
    teacher: str
    student_path: str
    student_layers: int
    teacher_layers: int
    kept_layers: list[int]
    teacher_params: int
    student_params: int
    expected_speedup: float
    train_seconds: float
    corpus_seconds: float
    tokens_seen: int
    train_tokens: int
    heldout_tokens: int
    corpus: str
    loss_first: float
    loss_last: float
    losses: list[float]
    heldout_kld_pruned: float
    heldout_kld_distilled: float
    heldout_top1_pruned: float
    heldout_top1_distilled: float
    heldout_kld_curve: list[tuple[int, float]]
    seconds_per_step_median: float
    peak_mem_mb: float
    usd_cost: float
    usd_per_hour: float
    settings: dict



def prepare_run(teacher_name: str, settings: DistillSettings, corpus_path: Path | None = None) -> tuple[models.ModelSpec, Path, StudentPlan]:
    """Everything that can be refused is checked here, before any model loads or anything is written."""
    if corpus_path is not None:
        corpus_path = Path(corpus_path)
        if not corpus_path.is_file():
            raise ValueError(f"Corpus file not found: {corpus_path}")
        if not corpus_path.read_bytes().strip():
            raise ValueError(f"{corpus_path.name} is empty: give a UTF-8 text file or JSONL of {{\"text\": ...}} lines.")
    spec = models.resolve(teacher_name)
    checkpoint = models.prepare(spec)
    models.check_loadable(checkpoint)
    return spec, checkpoint, plan(checkpoint, settings.student_layers, settings.layer_choice)


def run_distill(teacher_name: str, settings: DistillSettings, corpus_path: Path | None = None,
                usd_per_hour: float = 0.0, report: Report | None = None, should_stop: Callable[[], bool] | None = None,
                log: TrainLog | None = None, device: str = "auto") -> DistillResult:
    """Build the corpus (cached), cut the student, distill it with checkpoints, and save the final student."""
    say = report or (lambda f, m: None)
    stop = should_stop or (lambda: False)
    log = log if log is not None else TrainLog()
    device = benchmark.pick_device(device)
    spec, checkpoint, shape = prepare_run(teacher_name, settings, corpus_path)
    tokenizer = models.load_tokenizer(checkpoint)
    torch.manual_seed(settings.seed)
    teacher = models.load_model(checkpoint, torch.float32, device)

    t0 = time.perf_counter()
    if corpus_path is not None:
        corpus = corpus_from_file(corpus_path, tokenizer, settings.heldout_share)
    else:
        rows = teacher_answers(teacher, tokenizer, spec.key, settings.corpus_answer_tokens, device,
                               lambda f, m: say(0.25 * f, m), stop)
        corpus = corpus_from_answers(rows, tokenizer, settings.heldout_share)
    corpus_seconds = time.perf_counter() - t0

    student = make_student(teacher, shape.kept_layers)
    say(0.26, "held-out divergence of the pruned, untrained student")
    kld_pruned, top1_pruned = heldout_divergence(teacher, student, corpus.heldout, device)
    run = f"{spec.key.replace('/', '--')}-{shape.student_layers}L-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = students_dir() / run
    facts = {"run": run, "teacher": spec.key, "teacher_checkpoint": str(checkpoint), "teacher_layers": shape.teacher_layers,
             "student_layers": shape.student_layers, "kept_layers": shape.kept_layers, "steps": settings.steps,
             "settings": asdict(settings), "corpus": corpus.source, "complete": False}

    def save(step: int) -> None:
        save_checkpoint(student, tokenizer, run_dir, step, facts | {"complete": step == settings.steps,
                                                                   "loss_last": log.losses[-1]})

    benchmark.release_memory()
    try:
        with benchmark.PeakMemory(device) as mem:
            t1 = time.perf_counter()
            train_student(student, teacher, corpus, settings, device, lambda f, m: say(0.27 + 0.72 * f, m), stop, log, save)
            train_seconds = time.perf_counter() - t1
    except BaseException:
        if latest_checkpoint(run_dir) is None:
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing complete: leave nothing at all
        raise
    _, kld_distilled, top1_distilled = log.heldout[-1]  # the last checkpoint is the final step
    env = benchmark.environment(device, torch.get_num_threads())
    say(1.0, "done")
    return DistillResult(
        teacher=spec.key, student_path=str(latest_checkpoint(run_dir)), student_layers=shape.student_layers,
        teacher_layers=shape.teacher_layers, kept_layers=shape.kept_layers, teacher_params=shape.teacher_params,
        student_params=shape.student_params, expected_speedup=shape.expected_speedup,
        train_seconds=train_seconds, corpus_seconds=corpus_seconds, tokens_seen=log.tokens_seen,
        train_tokens=corpus.train_tokens, heldout_tokens=corpus.heldout_tokens, corpus=corpus.source,
        loss_first=log.losses[0], loss_last=log.losses[-1], losses=list(log.losses),
        heldout_kld_pruned=kld_pruned, heldout_kld_distilled=kld_distilled,
        heldout_top1_pruned=top1_pruned, heldout_top1_distilled=top1_distilled,
        heldout_kld_curve=[(0, kld_pruned)] + [(s, k) for s, k, _ in log.heldout],
        seconds_per_step_median=benchmark.Spread(tuple(log.step_seconds)).median, peak_mem_mb=mem.delta_bytes / 1e6,
        usd_cost=train_seconds / 3600 * usd_per_hour, usd_per_hour=usd_per_hour,
        settings=asdict(settings), **env.provenance(),
    )


# ---------------------------------------------------------------- measuring for the Trade-off Map


def _technique(key: str, label: str, build, explanation: str, surprise: str):
    from core import techniques

    return techniques.Technique(key=key, label=label, family="distillation", config=None, explanation=explanation,
                                surprise=surprise, build=build, unsupported=lambda _cfg, _dev: None)


def measure(result: DistillResult, store, usd_per_hour: float, hardware_preset: str = "laptop-cpu",
            report: Report | None = None, should_stop: Callable[[], bool] | None = None,
            launched_from: str = "cli", mc_max_items: int = 0) -> dict[str, object]:
    """Teacher, pruned-but-untrained student and distilled student through the sweep's harness, stored.

    Returns {"teacher": record, "student_pruned": record, "student_distilled": record}.
    """
    import uuid

    from core import techniques
    from core.experiments import sweep

    say = report or (lambda f, m: None)
    stop = should_stop or (lambda: False)
    settings = sweep.SweepSettings(hardware_preset=hardware_preset, usd_per_hour=usd_per_hour,
                                   launched_from=launched_from, mc_max_items=mc_max_items)
    inputs = sweep.prepare_inputs(result.teacher, settings, lambda m: say(0.0, m))
    reference = sweep.reference_pass(inputs, lambda f: say(0.1 * f, "reference pass"))
    n, run = result.student_layers, Path(result.student_path).parent.name

    def pruned(checkpoint, _cfg, device):
        return make_student(models.load_model(checkpoint, torch.float32, device), result.kept_layers)

    variants = {
        "teacher": techniques.get(techniques.REFERENCE),
        "student_pruned": _technique(
            f"pruned-{n}L", f"Pruned to {n} layer{'s' if n != 1 else ''} (untrained)", pruned,
            f"The teacher with only {n} of its {result.teacher_layers} layers kept, before any training.",
            "Removing layers without retraining breaks the model badly: this is the starting point distillation repairs."),
        "student_distilled": _technique(
            student_key(n, run), student_label(n, run),
            lambda _c, _cfg, device: models.load_model(Path(result.student_path), torch.float32, device),
            f"The {n}-layer student after {result.settings['steps']} steps of learning to match the teacher's "
            "next-token distributions.",
            "A short distillation recovers much of the quality but not all; more steps and more text recover more."),
    }
    run_id = uuid.uuid4().hex[:12]
    out = {}
    for i, (role, technique) in enumerate(variants.items()):
        def step(name: str, frac: float, i=i) -> None:
            if stop():
                raise Stopped("Stopped while measuring; the student is saved.")
            within = (sweep.STEPS.index(name) + frac) / len(sweep.STEPS) if name in sweep.STEPS else 0.0
            say(0.1 + 0.9 * (i + within) / len(variants), f"measuring {role.replace('_', ' ')}: {name}")

        record = sweep.measure_variant(technique, inputs, settings, reference, run_id, step)
        if role == "student_distilled":
            record.variant_facts = {"distillation": {k: v for k, v in result.to_dict().items() if k != "versions"}
                                    | {"role": role}}
        elif role == "student_pruned":  # shape only: it was never trained, so it carries no training cost
            record.variant_facts = {"distillation": {k: getattr(result, k) for k in (
                "teacher", "student_layers", "teacher_layers", "kept_layers", "student_params")} | {"role": role}}
        if store is not None:
            store.add(record)
        out[role] = record
    return out


def summary(result: DistillResult, records: dict) -> dict:
    """The CLI's JSON: the run and, for each of teacher / pruned / distilled, the headline measurements."""
    keys = ("decode_tokens_per_s_median", "ttft_ms_median", "size_mb", "perplexity", "kld_mean", "top1_agreement",
            "mc_accuracy", "mc_accuracy_ci95")
    out = result.to_dict()
    for role, record in records.items():
        out[role] = {k: getattr(record, k) for k in keys} | {"technique": record.technique}
    teacher, distilled = records["teacher"], records["student_distilled"]
    out["measured_speedup"] = distilled.decode_tokens_per_s_median / teacher.decode_tokens_per_s_median
    return out
