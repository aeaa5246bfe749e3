"""LoRA, QLoRA and full fine-tuning of a causal LM on a prompt -> completion task, measured side by side.

Pure pieces first (settings, data, batching), then training and evaluation. The run that ties them
together, and measures and stores its result, is core.experiments.finetune_run.
"""

from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch

from core.measure import evaluate, textfile
from core.measure.textfile import FileProblem
from core.models import load_model
from core.paths import ASSETS, Stopped
from core.techniques.quantization import QuantConfig, bitsandbytes_problem, bnb_config

Method = Literal["lora", "qlora", "full"]
METHODS: tuple[str, ...] = ("lora", "qlora", "full")
TASKS_DIR = ASSETS / "tasks"
BUNDLED_TASKS = {"support-routing": (TASKS_DIR / "support_routing_train.jsonl", TASKS_DIR / "support_routing_test.jsonl")}
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
Report = Callable[[float, str], None]
# peft asks transformers a deprecated question on every wrap; the answer is right, the notice is noise.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class FinetuneSettings:
    method: Method = "lora"
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ALL_LINEAR
    learning_rate: float = 0.0  # 0 = the method's default (below)
    steps: int = 80
    batch_size: int = 8
    seed: int = 0
    eval_items: int = 0  # 0 = the whole held-out set

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.method != "full" and self.rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps} and {self.batch_size}")
        if self.learning_rate < 0:
            raise ValueError(f"learning_rate must be >= 0, got {self.learning_rate}")
        if self.method != "full" and not self.target_modules:
            raise ValueError("name at least one target module for the LoRA adapters")

    @property
    def lr(self) -> float:
        # Adapters start at zero and are small: they take a much larger step than full weights can.
        return self.learning_rate or (2e-5 if self.method == "full" else 1e-3)


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str


EXAMPLE = '{"prompt": "...", "completion": "..."}'


def load_examples(path: Path) -> list[Example]:
    """Read {"prompt", "completion"} JSONL lines, naming the first bad line and what is wrong with it."""
    out = []
    for where, row in textfile.jsonl_rows(path, EXAMPLE):
        row = textfile.object_row(where, row, EXAMPLE)
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("completion"), str):
            raise where.problem(f"'prompt' and 'completion' must both be texts in quotes. Each line needs {EXAMPLE}.")
        if not row["prompt"].strip() or not row["completion"].strip():
            raise where.problem(f"'prompt' and 'completion' must not be empty. Each line needs {EXAMPLE}.")
        out.append(Example(row["prompt"], row["completion"].strip()))
    return out


def check_labels(examples: list[Example]) -> list[str]:
    labels = sorted({e.completion for e in examples})
    if len(labels) < 2:
        raise ValueError(f"The data has a single answer ({labels[0]!r}) for every example: nothing to learn or measure. "
                         "Give at least two different completions.")
    return labels


def load_task(task: str | None = None, data: Path | None = None, test_share: float = 0.2,
              seed: int = 0) -> tuple[list[Example], list[Example]]:
    """A bundled task's train/test files, or a user file split into train and a held-out part."""
    if data is not None:
        examples = load_examples(data)
        if len(examples) < 10:
            raise FileProblem(f"holds {len(examples)} examples; give at least 10 (some are held out to test on).",
                              str(data))
        rng = random.Random(seed)
        shuffled = examples[:]
        rng.shuffle(shuffled)
        cut = max(2, int(len(shuffled) * test_share))
        train, test = shuffled[cut:], shuffled[:cut]
    else:
        if task not in BUNDLED_TASKS:
            raise ValueError(f"Unknown task {task!r}; bundled tasks: {', '.join(BUNDLED_TASKS)}, or pass a data file.")
        train_path, test_path = BUNDLED_TASKS[task]
        train, test = load_examples(train_path), load_examples(test_path)
    check_labels(train)
    return train, test


def training_key(task: str | None = None, data: Path | str | None = None, seed: int = 0,
                 train_file: Path | str | None = None) -> str:
    """What a fine-tune learned from, by content rather than by file name: the sha256 of the file its training
    examples came from (a bundled task's train file, a --train file), and for a data file split 80/20 also the split's
    seed. The same content under another name finds the same adapter; a changed file under the same name does not."""
    if train_file:
        return evaluate.file_sha256(Path(train_file))
    if data:
        return f"{evaluate.file_sha256(Path(data))}:split-seed-{seed}"
    if task not in BUNDLED_TASKS:
        raise ValueError(f"Unknown task {task!r}; bundled tasks: {', '.join(BUNDLED_TASKS)}, or pass a data file.")
    return evaluate.file_sha256(BUNDLED_TASKS[task][0])


def encode(tokenizer, examples: list[Example]) -> dict[str, torch.Tensor]:
    """Right-padded batch; the loss is computed on the completion and end-of-text tokens only."""
    rows, labels = [], []
    for e in examples:
        p = tokenizer(e.prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(" " + e.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels]),
    }


# ---------------------------------------------------------------- models


def linear_module_names(model: torch.nn.Module) -> list[str]:
    return sorted({name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def check_targets(model: torch.nn.Module, targets: tuple[str, ...]) -> None:
    present = linear_module_names(model)
    missing = [t for t in targets if t not in present]
    if missing:
        raise ValueError(f"Target modules {missing} are not in this model; its linear layers are: {', '.join(present)}.")


def qlora_problem(device: str) -> str | None:
    return bitsandbytes_problem(device)


def load_base(checkpoint: Path, method: Method, device: str) -> torch.nn.Module:
    """A fresh copy of the base weights to fine-tune; QLoRA's is quantized to NF4 at load (the QLoRA recipe)."""
    if method == "qlora":
        if reason := qlora_problem(device):
            raise ValueError(f"QLoRA is not available here: {reason} Use method 'lora' instead.")
        return load_model(checkpoint, torch.float32, device, quantization_config=bnb_config(QuantConfig("nf4"), device))
    return load_model(checkpoint, torch.float32, device)


def attach(model: torch.nn.Module, settings: FinetuneSettings) -> torch.nn.Module:
    """Wrap with LoRA adapters (peft), or mark every weight trainable for full fine-tuning."""
    if settings.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    # Lazily: peft imports bitsandbytes, which probes its CPU kernels and logs at import; only a fine-tune needs it.
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if settings.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, config)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total); for a peft model, peft's own count (4-bit weights counted as peft counts them)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- training and evaluation


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    tokens_seen: int = 0


def train(model, tokenizer, examples: list[Example], settings: FinetuneSettings, report: Report,
          should_stop: Callable[[], bool], log: TrainLog | None = None) -> TrainLog:
    """Plain AdamW loop over shuffled batches; `log` is filled as it goes so a page can draw the curve live."""
    log = log if log is not None else TrainLog()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    order: list[int] = []
    model.train()
    for step in range(settings.steps):
        if should_stop():
            raise Stopped(f"Stopped at step {step} of {settings.steps}; nothing was saved.")
        if len(order) < settings.batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        batch = encode(tokenizer, [examples[order.pop()] for _ in range(settings.batch_size)])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        t0 = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        log.step_seconds.append(time.perf_counter() - t0)
        log.losses.append(loss.item())
        log.tokens_seen += int(batch["attention_mask"].sum())
        report((step + 1) / settings.steps, f"step {step + 1}/{settings.steps}: loss {loss.item():.3f}")
    model.eval()
    return log


def normalise(text: str) -> str:
    words = text.strip().split()
    return words[0].strip(".,:;!?\"'").lower() if words else ""


@torch.inference_mode()
def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int, batch: int = 16) -> list[str]:
    """Greedy continuations, batched with left padding, as text."""
    tokenizer.padding_side = "left"
    out = []
    for i in range(0, len(prompts), batch):
        enc = tokenizer(prompts[i : i + batch], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    tokenizer.padding_side = "right"
    return out


@dataclass(frozen=True)
class TaskAccuracy:
    accuracy: float
    ci95: tuple[float, float]
    outputs: list[str]


def exact_match(model, tokenizer, examples: list[Example]) -> TaskAccuracy:
    """Share of held-out prompts whose greedy answer's first word is the expected completion (case-insensitive)."""
    longest = max(len(tokenizer(" " + e.completion, add_special_tokens=False)["input_ids"]) for e in examples)
    outputs = greedy_answers(model, tokenizer, [e.prompt for e in examples], longest + 1)
    correct = [normalise(o) == normalise(e.completion) for o, e in zip(outputs, examples)]
    return TaskAccuracy(sum(correct) / len(correct), evaluate.bootstrap_ci(correct), outputs)


# ---------------------------------------------------------------- sizes on disk


def dir_size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# ---------------------------------------------------------------- the fine-tuned model's names


def technique_key(method: str, task: str, rank: int) -> str:
    """The key a fine-tuned model is stored (and its merged checkpoint found) under."""
    return f"{method}-{Path(task).stem}-r{rank}"


def technique_label(method: str, task: str, rank: int) -> str:
    return f"{method.upper()} r{rank} on {Path(task).stem}" if method != "full" else f"Full fine-tune on {Path(task).stem}"
