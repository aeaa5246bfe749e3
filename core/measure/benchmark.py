"""The one timing primitive, and the facts every measurement records.

`repeat` runs a measured function `warmup + repeats` times and keeps only the timed samples.
A runner's `stream` (core/runtimes/) is the one greedy decode loop: it yields each token with its own compute time
so far, which the arena draws live. `timed_generation` runs it for exactly N tokens: the prefill (time to first
token) and the decode steps are timed separately inside the same call, so the tokens counted are always
the tokens timed.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Callable, TypeVar

import torch

from core.measure import cpu, others

T = TypeVar("T")
Clock = Callable[[], float]


# ---------------------------------------------------------------- statistics (pure)


def percentile(samples: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100] (numpy's default method)."""
    if not samples:
        raise ValueError("percentile of no samples")
    xs = sorted(samples)
    pos = (len(xs) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Spread:
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p10(self) -> float:
        return percentile(list(self.samples), 10)

    @property
    def p90(self) -> float:
        return percentile(list(self.samples), 90)


# ---------------------------------------------------------------- the timing primitive

# Wraps every timed generation. The CLI leaves it a no-op; the worker sets it so that page runs pause while it
# times (core/launch/quiet.py says why).
_timed_section: Callable[[], "contextlib.AbstractContextManager"] = contextlib.nullcontext
# A run during which other processes used others.QUIET_SHARE of the machine or more is timed again, once: a passing
# disturbance (a tab redrawing, a cron job) is gone a few seconds later, and one that stays (another job holding a
# core) stays through any number of retries, which would only make the sweep longer. The record says which it was.
DISTURBED_RETRIES = 1


# Wraps each bench_generation (a warm-up and its repeats): the worker marks it a timing phase, during which open
# pages stop redrawing on timers.
_timed_phase: Callable[[], "contextlib.AbstractContextManager"] = contextlib.nullcontext


def set_timed_section(factory: Callable[[], "contextlib.AbstractContextManager"] | None,
                      phase: Callable[[], "contextlib.AbstractContextManager"] | None = None) -> None:
    """Install context manager factories held around each timed generation and around each bench_generation;
    None restores the no-ops."""
    global _timed_section, _timed_phase
    _timed_section = factory or contextlib.nullcontext
    _timed_phase = phase or contextlib.nullcontext


def timing_phase() -> "contextlib.AbstractContextManager":
    """The installed phase, for timing loops of their own (serving points, speculative decoding)."""
    return _timed_phase()


def repeat(fn: Callable[[], T], warmup: int, repeats: int) -> list[T]:
    """Call fn warmup + repeats times; return the results of the timed calls only."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    for _ in range(warmup):
        fn()
    return [fn() for _ in range(repeats)]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass(frozen=True)
class GenerationRun:
    ttft_s: float  # prompt prefill + first token
    decode_s: float  # the remaining new_tokens - 1 steps
    decode_tokens: int
    token_ids: tuple[int, ...]
    # Share of the machine's CPU other processes used during each try of this run (None: unknown); the kept try last.
    others_shares: tuple[float | None, ...] = ()

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else float("inf")

    @property
    def others_share(self) -> float | None:
        return self.others_shares[-1] if self.others_shares else None


def _others_share(section, meter: others.OthersMeter) -> float | None:
    """The section's own measure where it keeps one (the worker's gate counts only the stretches it held pages back,
    not the turns it gave them between steps), else this run's meter."""
    share = getattr(section, "others_share", None)
    return share if share is not None else meter.share()


def timed_generation(runner, input_ids: torch.Tensor, new_tokens: int, device: str = "cpu",
                     clock: Clock = time.perf_counter) -> GenerationRun:
    """Greedy decode of exactly `new_tokens` tokens (EOS ignored, so every variant does the same work).

    `runner` is a Runner of any runtime (core.runtimes.base); wrap a torch model with `runtimes.as_runner`. Each try
    measures what other processes used of the machine meanwhile; a disturbed one is timed again (DISTURBED_RETRIES).
    """
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 to time decoding, got {new_tokens}")
    shares: list[float | None] = []
    for _ in range(1 + DISTURBED_RETRIES):
        with _timed_section() as turn:
            meter = others.OthersMeter()
            # Each step is timed on its own (own_s leaves out the time between steps), so the section may let
            # waiting pages in between two of them.
            between_steps = getattr(turn, "between_steps", None) or (lambda: None)
            steps = []  # [(token_id, own_s)] * new_tokens
            for step in runner.stream(input_ids, new_tokens, clock):
                steps.append(step)
                between_steps()
            meter.pause()
        shares.append(_others_share(turn, meter))
        if not others.is_disturbed(shares[-1]):
            break
    ttft_s, total_s = steps[0][1], steps[-1][1]
    return GenerationRun(ttft_s, total_s - ttft_s, new_tokens - 1, tuple(t for t, _ in steps), tuple(shares))


@dataclass(frozen=True)
class GenerationBench:
    ttft_ms: Spread
    decode_tokens_per_s: Spread
    token_ids: tuple[int, ...]  # greedy output of the last timed run
    warmup: int
    repeats: int
    new_tokens: int
    prompt_tokens: int
    others_load: others.OthersLoad = others.OthersLoad()  # what other processes used during the timed runs


def bench_generation(runner, input_ids: torch.Tensor, new_tokens: int, warmup: int, repeats: int,
                     device: str = "cpu", clock: Clock = time.perf_counter) -> GenerationBench:
    with timing_phase():
        runs = repeat(lambda: timed_generation(runner, input_ids, new_tokens, device, clock), warmup, repeats)
    return GenerationBench(
        ttft_ms=Spread(tuple(r.ttft_s * 1e3 for r in runs)),
        decode_tokens_per_s=Spread(tuple(r.decode_tokens_per_s for r in runs)),
        token_ids=runs[-1].token_ids, warmup=warmup, repeats=repeats,
        new_tokens=new_tokens, prompt_tokens=int(input_ids.shape[-1]), others_load=others.load_of(runs),
    )


# ---------------------------------------------------------------- bytes held


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _quant_state_tensors(param) -> list[torch.Tensor]:
    """Tensors bitsandbytes keeps beside a packed weight: absmax scales, codebook, nested state, row scales."""
    out = []
    qs = getattr(param, "quant_state", None)
    if qs is not None:
        for name in ("absmax", "code", "offset"):
            t = getattr(qs, name, None)
            if isinstance(t, torch.Tensor):
                out.append(t)
        nested = getattr(qs, "state2", None)
        if nested is not None:
            out += [t for t in (getattr(nested, "absmax", None), getattr(nested, "code", None)) if isinstance(t, torch.Tensor)]
    scb = getattr(param, "SCB", None)
    if isinstance(scb, torch.Tensor):
        out.append(scb)
    return out


def _packed_dynamic_tensors(model) -> list[torch.Tensor]:
    """int8 weights and scales inside torch dynamic-quantized Linear modules (not visible as parameters)."""
    out = []
    for m in model.modules():
        packed = getattr(m, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            w, b = packed._weight_bias()
            out.append(w.int_repr())
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                out += [w.q_per_channel_scales(), w.q_per_channel_zero_points()]
            if b is not None:
                out.append(b)
    return out


def bytes_held(model: torch.nn.Module) -> int:
    """Bytes of every tensor the model keeps, packed 4-bit weights counted as stored, shared tensors once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    tensors: list[torch.Tensor] = []
    for p in model.parameters():
        tensors.append(p)
        tensors += _quant_state_tensors(p)
    tensors += list(model.buffers())
    tensors += _packed_dynamic_tensors(model)
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.device.type != "meta" else (id(t), 0)
        if key in seen:
            continue
        seen.add(key)
        total += _tensor_bytes(t)
    return total


# ---------------------------------------------------------------- memory


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_memory() -> None:
    """Give freed memory back to the OS so the next variant's resident-memory delta starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every few ms (and CUDA's own peak on GPU)."""
    def __init__(self, device: str = "cpu", interval_s: float = 0.005):
        self.device, self.interval_s = device, interval_s
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
        else:
            self.baseline = self.peak = rss_bytes()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        if self._thread:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        else:
            self.peak = torch.cuda.max_memory_allocated()

    @property
    def delta_bytes(self) -> int:
        return max(0, self.peak - self.baseline)


# ---------------------------------------------------------------- memory bandwidth


def measure_bandwidth_gb_s(size_mb: int = 512, repeats: int = 10, device: str = "cpu") -> Spread:
    """Read a large buffer end to end (a sum: one read per element, no writes), in GB/s per run.

    Decoding one token reads every weight once, so read bandwidth is the ceiling that matters. The
    ceiling is the best run (`max(samples)`): slower runs measure interference, not the hardware.
    """
    n = size_mb * 2**20 // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    src.sum()  # fault the pages in before timing

    def one() -> float:
        synchronize(device)
        t0 = time.perf_counter()
        src.sum()
        synchronize(device)
        return n * 4 / (time.perf_counter() - t0) / 1e9

    return Spread(tuple(repeat(one, warmup=1, repeats=repeats)))


def roofline_tokens_per_s(bandwidth_gb_s: float, bytes_per_token: int) -> float:
    """Upper bound on single-stream decode: every weight byte is read once per generated token."""
    if bytes_per_token <= 0:
        raise ValueError(f"bytes_per_token must be positive, got {bytes_per_token}")
    return bandwidth_gb_s * 1e9 / bytes_per_token


# ---------------------------------------------------------------- provenance


def pick_device(requested: str = "auto") -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but no NVIDIA GPU is visible; use --device cpu")
    if requested not in ("cpu", "cuda") and not requested.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, got {requested!r}")
    return requested


def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC 7B13"): what benchmarks print, not what tells machines apart."""
    return _cpu().model_name


@functools.cache
def _cpu() -> cpu.CpuFacts:
    return cpu.this_cpu()  # the CPU does not change while the process runs: read /proc/cpuinfo once


def describe_device(device: str) -> str:
    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


# Every AVX2 chip (Intel Haswell, AMD Zen onwards) also has FMA and F16C: naming them would only lengthen the line.
_IMPLIED_BY_AVX2 = ("FMA", "F16C")


def fingerprint_of(facts: cpu.CpuFacts, cores: int, ram_gib: float, gpu: str | None = None) -> str:
    """The machine in one readable line, a pure function of its parts: the same parts give the same string.

    The model name alone is not enough (an AVX2-only EPYC and an AVX-512 one share it and differ 2-8x in speed), so
    the line names vendor, family, model and stepping and the instruction sets the kernels use."""
    shown = [f for f in facts.speed_features if not ("AVX2" in facts.speed_features and f in _IMPLIED_BY_AVX2)]
    if facts.vendor == "?":  # no /proc/cpuinfo (not Linux): the name is all there is to say
        chip = facts.model_name
    else:
        features = ", ".join(shown) or "none of the vector extensions the kernels use"
        chip = f"{facts.model_name} ({facts.vendor} {facts.identity}; {features})"
    base = f"{chip}, {cores} cores, {ram_gib:.0f} GiB RAM"
    return f"{gpu} + {base}" if gpu else base


def _machine_parts(device: str) -> tuple[int, float, str | None]:
    """This machine's cores, RAM in GiB and GPU name (None on the CPU), the fingerprint's parts besides the CPU."""
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return os.cpu_count() or 1, ram_gib, torch.cuda.get_device_name(device) if device.startswith("cuda") else None


def hardware_fingerprint(device: str) -> str:
    """A stable description of the machine: results with different fingerprints are not comparable."""
    return fingerprint_of(_cpu(), *_machine_parts(device))


def old_style_fingerprint(device: str) -> str:
    """What records measured before the fingerprint named CPU family and features call this machine ("AMD EPYC,
    2 cores, 24 GiB RAM"): every machine with the same CPU name, cores and RAM was called the same then."""
    return fingerprint_of(replace(_cpu(), vendor="?"), *_machine_parts(device))  # "?": the CPU's name only


def library_versions() -> dict[str, str]:
    names = ["torch", "transformers", "bitsandbytes", "peft", "accelerate", "numpy", "llama_cpp_python"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


@dataclass(frozen=True)
class Environment:
    device: str
    device_label: str
    threads: int
    hardware: str
    versions: dict[str, str] = field(default_factory=dict)

    def provenance(self) -> dict:
        """The `Provenance` fields of a result measured here."""
        return {"device": self.device_label, "threads": self.threads, "hardware": self.hardware,
                "versions": dict(self.versions)}


@dataclass
class Provenance:
    """Where a run's result was measured. Fine-tuning, distillation and speculative results extend it."""
    device: str
    threads: int
    hardware: str
    versions: dict

    def to_dict(self) -> dict:

        return asdict(self)


def environment(device: str, threads: int) -> Environment:
    return Environment(device, describe_device(device), threads, hardware_fingerprint(device), library_versions())
