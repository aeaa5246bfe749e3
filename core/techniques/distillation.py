"""Knowledge distillation: a smaller student cut from the teacher's own layers, trained to match it.

The student starts as the teacher with some decoder layers removed (DistilBERT initialised its student
from every other teacher layer). Training minimises the temperature-scaled KL divergence between the
teacher's and the student's next-token distributions, optionally mixed with the ordinary language-model
loss, on real text: by default the teacher's own answers to the bundled prompts. The trained student is
then measured like any variant and can serve as the teacher's draft model (see `speculate`). One run end to
end, and its measuring, is core.experiments.distill_run.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from core import models
from core.measure import benchmark
from core.measure.cpu import this_cpu
from core.models.saved import checkpoint_name
from core.paths import Stopped
from core.techniques.distill_corpus import Corpus
from core.techniques.depth import (LAYER_CHOICES, LayerChoice, check_depth, decoder_layers, layer_scores,
                                   make_student, pick_layers)

Report = Callable[[float, str], None]


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class DistillSettings:
    student_layers: int = 15
    layer_choice: LayerChoice = "redundancy"  # measured lower KL divergence than an even spread at every depth
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
    # > 0: heal for this many minutes of wall time instead of a number of steps; the learning-rate schedule and the
    # checkpoints follow the clock, so a slower machine trains fewer steps in the same budget, never longer
    budget_minutes: float = 0.0
    # 0: every kept layer trains; n: only the last n kept layers and the final norm (Lu et al., arXiv 2411.15558:
    # healing the top of a pruned stack recovers most of the loss, and the backward pass stops there: cheaper steps)
    train_last_layers: int = 0
    # with the user's text: the teacher's answers join it, so the student sees the teacher's chat manner beside
    # the text's prose (a few hundred answers alone are too few: a 25-minute heal overfits them)
    answers_with_text: bool = False
    # steps in bfloat16 (weights, optimizer and the evaluation stay float32) where the hardware multiplies bf16
    # natively: about 1.5x the steps per minute on a CPU with AVX-512 BF16 or AMX; elsewhere emulated bf16 is
    # slower than float32, so "auto" trains in float32 there. "off" always trains in float32.
    mixed_precision: Literal["auto", "off"] = "auto"

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
        if self.budget_minutes and self.budget_minutes < 1:
            raise ValueError(f"A healing budget of {self.budget_minutes:g} min trains only a handful of steps; give at "
                             "least 1 minute (or 0 to train a number of steps).")
        if self.mixed_precision not in ("auto", "off"):
            raise ValueError(f"mixed_precision is 'auto' or 'off', got {self.mixed_precision!r}.")
        if not 0 <= self.train_last_layers <= self.student_layers:
            raise ValueError(f"train_last_layers must be between 0 (all) and the student's {self.student_layers} "
                             f"layers, got {self.train_last_layers}.")

    def done_share(self, step: int, elapsed_s: float) -> float:
        """How far training is, 0..1: by the clock under a budget, else by steps."""
        if self.budget_minutes:
            return min(1.0, elapsed_s / (60 * self.budget_minutes))
        return min(1.0, step / self.steps)


# ---------------------------------------------------------------- the student's shape


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

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint))


def plan(checkpoint: Path, student_layers: int, how: LayerChoice = "spread") -> StudentPlan:
    """The student's shape; by redundancy the teacher runs over the calibration text once (then cached), else
    nothing is loaded."""
    teacher = meta_model(checkpoint)
    n = len(decoder_layers(teacher))
    check_depth(n, student_layers)  # before any scoring: a bad depth is refused without loading the model
    keep = pick_layers(n, student_layers, how, layer_scores(checkpoint).influence if how == "redundancy" else None)
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
    heldout_seconds: list[float] = field(default_factory=list)  # wall seconds of training at each checkpoint
    tokens_seen: int = 0
    steps_total: int = 0  # under a time budget: the steps so far, plus the estimate for the time left


def lr_at(step: int, settings: DistillSettings, done: float | None = None) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak over `done` (0..1; by steps when not given)."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps) if done is None else done
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def bf16_steps(settings: DistillSettings, device: str) -> bool:
    """Whether training steps run under bfloat16 autocast on this device (see DistillSettings.mixed_precision)."""
    if settings.mixed_precision == "off":
        return False
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return device == "cpu" and any(this_cpu().has(flag) for flag in ("avx512_bf16", "amx_bf16"))


def trainable_parameters(student: torch.nn.Module, train_embeddings: bool, last_layers: int = 0) -> list[torch.nn.Parameter]:
    """Every decoder layer (or only the last `last_layers`) and the final norm; the (tied) token table only on
    request: freezing it makes each step cheaper and keeps the student's token space exactly the teacher's, which a
    speculative draft wants."""
    embeddings = {id(student.get_input_embeddings().weight), id(student.get_output_embeddings().weight)}
    layers = decoder_layers(student)
    frozen = {id(p) for layer in list(layers)[: len(layers) - last_layers] for p in layer.parameters()} if last_layers else set()
    params = []
    for p in student.parameters():
        p.requires_grad_((train_embeddings or id(p) not in embeddings) and id(p) not in frozen)
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
                  stop: Callable[[], bool], log: TrainLog, save: Callable[[int, bool], None],
                  params: list[torch.nn.Parameter] | None = None) -> TrainLog:
    """AdamW over packed batches of the training part; `save(step, final)` is called at each checkpoint. `params`:
    the tensors to train when the caller chooses them (a carved MoE's experts), else the student's layers.

    With `settings.budget_minutes` the run ends when the budget is spent (checkpoint evaluations included) and the
    checkpoints fall at equal shares of it, so the held-out curve reads as quality against minutes of CPU.
    """
    rows = pack(corpus.train, settings.seq_len_tokens)
    params = params if params is not None else trainable_parameters(student, settings.train_embeddings,
                                                                     settings.train_last_layers)
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.empty(0, dtype=torch.long)
    marks = [(i + 1) / settings.checkpoints for i in range(settings.checkpoints)]  # shares of the run
    log.steps_total = settings.steps
    bf16 = bf16_steps(settings, device)
    teacher.eval()
    student.train()
    start, step = time.perf_counter(), 0
    while (done := settings.done_share(step, time.perf_counter() - start)) < 1:
        if stop():
            raise Stopped(f"Stopped at step {step}" + ("." if settings.budget_minutes else f" of {settings.steps}."))
        if len(order) < settings.batch_size:  # reshuffle each epoch
            order = torch.cat([order, torch.randperm(len(rows), generator=generator)])
        batch, order = rows[order[: settings.batch_size]].to(device), order[settings.batch_size :]
        _train_step(student, teacher, batch, params, optimizer, lr_at(step, settings, done), settings, device, log, bf16)
        step += 1
        done = settings.done_share(step, time.perf_counter() - start)
        if settings.budget_minutes:  # the steps a budget will hold, from the pace so far
            log.steps_total = step if done >= 1 else max(step + 1, round(step / done))
        report(done, f"step {step}/{log.steps_total}: loss {log.losses[-1]:.3f}")
        while marks and done >= marks[0]:
            marks.pop(0)
            _checkpoint(student, teacher, corpus, device, log, step, time.perf_counter() - start, save, final=done >= 1)
    if not log.heldout or log.heldout[-1][0] != step:  # the budget ran out between marks: the end is a checkpoint too
        _checkpoint(student, teacher, corpus, device, log, step, time.perf_counter() - start, save, final=True)
    student.eval()
    return log


def _train_step(student, teacher, batch, params, optimizer, lr: float, settings: DistillSettings, device: str,
                log: TrainLog, bf16: bool) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    t0 = time.perf_counter()
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        with torch.no_grad():
            teacher_logits = teacher(input_ids=batch).logits
        student_logits = student(input_ids=batch).logits
    # the loss in float32 (distill_loss casts): a 49k-way softmax in bf16 loses the small probabilities KL weighs
    loss = distill_loss(student_logits, teacher_logits, batch, settings.temperature, settings.kd_weight)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    benchmark.synchronize(device)
    log.step_seconds.append(time.perf_counter() - t0)
    log.losses.append(float(loss.detach()))
    log.tokens_seen += batch.numel()


def _checkpoint(student, teacher, corpus: Corpus, device: str, log: TrainLog, step: int, seconds: float,
                save: Callable[[int, bool], None], final: bool) -> None:
    student.eval()
    log.heldout.append((step, *heldout_divergence(teacher, student, corpus.heldout, device)))
    log.heldout_seconds.append(seconds)
    save(step, final)
    student.train()


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
