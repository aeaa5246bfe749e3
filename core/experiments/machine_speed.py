"""How fast this machine runs the bundled model, measured once in a few seconds: what a job estimate scales by
where this machine has no similar job of its own yet (core/launch/estimates.py).

Two speeds, since a job is bound by one or the other and machines differ in their ratio: decode at batch 1 is bound
by memory bandwidth, training by matrix arithmetic (where AVX-512 or AMX help). Decode is greedy, batch 1, with the KV
cache (what a sweep, a hybrid or a serving run spends its time on); training is forward and backward over a
batch of 2 x 128 tokens (what LoRA and distillation spend theirs on).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from core import runtimes
from core.measure import benchmark
from core.measure.others import OthersMeter
from core.models import load_model
from core.paths import data_dir

DECODE_TOKENS = 16
PROMPT_TOKENS = 32
BUSY_SHARE = 0.25  # of all cores: others used this much while it measured -> not kept as this machine's speed
TRAIN_BATCH, TRAIN_SEQ_TOKENS = 2, 128
RUNS = 3  # after one warm-up: the median of three is steady to a few percent on a quiet machine


@dataclass(frozen=True)
class MachineSpeed:
    hardware: str  # benchmark.hardware_fingerprint: the machine these speeds belong to
    model: str  # the model measured (the bundled one)
    decode_tokens_per_s: float
    train_tokens_per_s: float  # tokens through forward and backward
    load_s: float
    measured_at: str
    others_share_max: float | None = None  # what other processes used of the machine meanwhile (share of all cores)

    def rate(self, bound: str) -> float:
        return self.train_tokens_per_s if bound == "train" else self.decode_tokens_per_s


def _median_s(fn, runs: int = RUNS) -> float:
    fn()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _train_step(model, vocab: int) -> None:
    ids = torch.randint(0, vocab, (TRAIN_BATCH, TRAIN_SEQ_TOKENS))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    model.zero_grad(set_to_none=True)


def measure(checkpoint: Path, model_key: str, hardware: str) -> MachineSpeed:
    """Load the model in float32 and time decode (the sweep's own timing primitive, which repeats a run disturbed by
    other processes) and training steps: about 15 s for the bundled 135M model."""
    meter = OthersMeter()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = load_model(checkpoint)
    load_s = time.perf_counter() - t0
    vocab = int(model.config.vocab_size)
    model.eval()
    prompt = torch.randint(0, vocab, (1, PROMPT_TOKENS))
    bench = benchmark.bench_generation(runtimes.as_runner(model, "cpu"), prompt, DECODE_TOKENS, 1, RUNS, "cpu")
    model.train()
    train_s = _median_s(lambda: _train_step(model, vocab))
    del model
    return MachineSpeed(hardware, model_key, bench.decode_tokens_per_s.median,
                        TRAIN_BATCH * TRAIN_SEQ_TOKENS / train_s, load_s,
                        datetime.now(timezone.utc).isoformat(timespec="seconds"), meter.share())


def steady(speed: MachineSpeed | None) -> bool:
    """Measured on a quiet enough machine to scale estimates by (else it is measured again at the next idle moment)."""
    return speed is not None and (speed.others_share_max or 0.0) < BUSY_SHARE


def speeds_path() -> Path:
    return data_dir() / "machine_speed.json"


def saved(hardware: str, path: Path | None = None) -> MachineSpeed | None:
    """This machine's measured speeds, or None before the first measurement here."""
    try:
        entry = json.loads((path or speeds_path()).read_text()).get(hardware)
        return MachineSpeed(**entry) if entry else None
    except (OSError, ValueError, TypeError):
        return None  # missing or unreadable: measured again at the next idle moment


def save(speed: MachineSpeed, path: Path | None = None) -> None:
    path = path or speeds_path()
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    table[speed.hardware] = asdict(speed)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=2))
    tmp.replace(path)  # whole or not at all: a job stopped mid-write never leaves a cut file
