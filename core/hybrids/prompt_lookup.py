"""Prompt-lookup decoding: the drafts are n-grams copied from the prompt itself, checked by the model in one pass.

Where the answer repeats the prompt (extracting, quoting, lightly rewriting a passage), the last one or two tokens
generated usually occur in the prompt, and the tokens that followed them there are a good guess of what comes next:
the model verifies up to `draft_tokens` of them in one forward pass and keeps the ones it would have chosen itself.
Greedy verification keeps exactly the model's own output. Where the answer is new text, the guesses miss, and each
pass verifies drafts for nothing.

Both runtimes use their library's own implementation: transformers' `generate(prompt_lookup_num_tokens=...)` and
llama-cpp-python's `LlamaPromptLookupDecoding` as the `draft_model` of a `Llama`. Each is compared with plain greedy
decoding on the same runtime and the same model file, prompt by prompt, with the outputs compared token by token
(as core/experiments/speculative.py does for a draft model).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from core import models, techniques
from core.measure import benchmark
from core.paths import ASSETS, Stopped, data_dir
from core.runtimes.llamacpp import BATCH_TOKENS, CONTEXT_TOKENS, llama_cpp_problem
from core.store import jsonl

Report = Callable[[float, str], None]
RUNTIMES = ("transformers", "llama.cpp")
PROMPT_FILES = (ASSETS / "hybrids" / "grounded_prompts.json", ASSETS / "hybrids" / "open_prompts.json")
DRAFT_TOKENS_RANGE = (1, 64)  # tokens copied from the prompt per verifying pass
NEW_TOKENS_RANGE = (2, 1024)  # prompt + answer must fit llama.cpp's context
MAX_NGRAM = 2  # both libraries' default: match the last 2 (else 1) generated tokens in the prompt


@dataclass(frozen=True)
class LookupSettings:
    runtimes: tuple[str, ...] = RUNTIMES
    technique: str = "gguf-q4_k_m"  # the GGUF file llama.cpp runs (transformers runs the fp32 checkpoint)
    draft_tokens: int = 10
    new_tokens: int = 64  # at most; both modes stop at the model's end-of-turn token
    repeats: int = 3  # timed runs of each mode per prompt, after one warm-up of each; the median is kept
    threads: int = 2
    max_ngram: int = MAX_NGRAM
    prompt_files: tuple[str, ...] = tuple(str(p) for p in PROMPT_FILES)

    def __post_init__(self):
        lo, hi = DRAFT_TOKENS_RANGE
        if not lo <= self.draft_tokens <= hi:
            raise ValueError(f"draft tokens must be between {lo} and {hi}, got {self.draft_tokens}")
        lo, hi = NEW_TOKENS_RANGE
        if not lo <= self.new_tokens <= hi:
            raise ValueError(f"new tokens must be between {lo} and {hi}, got {self.new_tokens}")
        if self.repeats < 1 or self.threads < 1 or self.max_ngram < 1:
            raise ValueError(f"repeats, threads and max n-gram must be at least 1, got {self.repeats}, "
                             f"{self.threads}, {self.max_ngram}")
        if not self.runtimes:
            raise ValueError(f"no runtime given; choose from {', '.join(RUNTIMES)}")
        for r in self.runtimes:
            if r not in RUNTIMES:
                raise ValueError(f"unknown runtime {r!r}; prompt lookup runs on {', '.join(RUNTIMES)}")
        if not self.prompt_files:
            raise ValueError("no prompt file given")


def load_prompt_set(path: str | Path) -> tuple[str, list[dict]]:
    """(set name, [{"title", "prompt"}]) from a file {"name", "prompts": [...]}; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file not found: {path}")
    try:
        data = json.loads(path.read_text())
        name, prompts = str(data.get("name") or path.stem), list(data["prompts"])
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: expected JSON {{\"name\": ..., \"prompts\": [{{\"prompt\": ...}}]}} ({e})") from e
    if not prompts or not all(isinstance(p, dict) and str(p.get("prompt", "")).strip() for p in prompts):
        raise ValueError(f"{path}: every entry of \"prompts\" needs a non-empty \"prompt\"")
    return name, prompts


def check_request(settings: LookupSettings) -> list[tuple[str, list[dict]]]:
    """Everything that can be refused before a model loads or a file is written; returns the prompt sets."""
    sets = [load_prompt_set(p) for p in settings.prompt_files]
    names = [n for n, _ in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"two prompt files share a set name: {names}")
    if "llama.cpp" in settings.runtimes:
        technique = techniques.get(settings.technique)
        if technique.family != "gguf":
            raise ValueError(f"llama.cpp runs GGUF files; {settings.technique!r} is not one "
                             f"(choose a gguf-* technique, e.g. gguf-q4_k_m)")
        if (problem := llama_cpp_problem()) is not None:
            raise ValueError(problem)
    return sets


# ---------------------------------------------------------------- one generation, timed and counted


@dataclass(frozen=True)
class Decode:
    tokens: tuple[int, ...]
    first_s: float  # prompt pass: until the first token(s) came out
    last_s: float  # until the last token came out
    first_tokens: int  # tokens the first pass yielded (more than 1 when drafts checked in it were kept)
    drafted: int  # draft tokens proposed (0 in plain decoding)
    accepted: int  # of those, kept because the model chose them too

    @property
    def decode_tokens(self) -> int:
        return len(self.tokens) - self.first_tokens

    @property
    def decode_s(self) -> float:
        return self.last_s - self.first_s


class _Times:
    """A transformers streamer that notes when each chunk of new tokens comes out (the first put is the prompt)."""
    def __init__(self, clock):
        self.clock, self.t0, self.chunks = clock, clock(), []  # [(seconds since t0, tokens in the chunk)]
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.chunks.append((self.clock() - self.t0, int(value.numel())))

    def end(self):
        pass


class TransformersDecoder:
    runtime = "transformers"

    def __init__(self, model, tokenizer, settings: LookupSettings, model_file: str):
        self.model, self.tokenizer, self.settings, self.model_file = model, tokenizer, settings, model_file
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, new_tokens: int, lookup: bool) -> Decode:
        passes = []  # tokens each forward pass was given: [prompt + drafts, 1 + drafts, 1 + drafts, ...]
        hook = self.model.register_forward_pre_hook(
            lambda _m, args, kwargs: passes.append(int((kwargs.get("input_ids") if "input_ids" in kwargs
                                                        else args[0]).shape[-1])), with_kwargs=True)
        extra = {"prompt_lookup_num_tokens": self.settings.draft_tokens,
                 "max_matching_ngram_size": self.settings.max_ngram} if lookup else {}
        try:
            times = _Times(time.perf_counter)
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=new_tokens, pad_token_id=self.pad, streamer=times, **extra)
        finally:
            hook.remove()
        tokens = tuple(int(t) for t in out[0, ids.shape[1]:])
        drafted = (passes[0] - ids.shape[1]) + sum(n - 1 for n in passes[1:]) if passes else 0
        # each verifying pass yields its kept drafts plus one token of the model's own
        accepted = max(0, len(tokens) - len(passes)) if lookup else 0
        (first_s, first_n), (last_s, _) = times.chunks[0], times.chunks[-1]
        return Decode(tokens, first_s, last_s, first_n, drafted if lookup else 0, accepted)

    def text(self, tokens) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)


class LlamaCppDecoder:
    """Two `Llama` objects on one GGUF file: plain greedy, and greedy with `LlamaPromptLookupDecoding` as its draft
    model. llama-cpp-python keeps no counts, so a subclass of its lookup notes each proposal, and the kept ones are
    found by comparing each proposal with the tokens that followed (greedy verification keeps exactly those)."""
    runtime = "llama.cpp"

    def __init__(self, path: Path, tokenizer, settings: LookupSettings):
        from llama_cpp import Llama  # lazily: the binding is optional, and loading it loads libllama
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        class CountingLookup(LlamaPromptLookupDecoding):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                self.proposals: list[tuple[int, list[int]]] = []  # (sequence length when proposed, drafts)

            def __call__(self, input_ids, /, **kwargs):
                drafts = super().__call__(input_ids, **kwargs)
                self.proposals.append((int(input_ids.shape[0]), [int(t) for t in drafts]))
                return drafts

        common = dict(model_path=str(path), n_ctx=CONTEXT_TOKENS, n_batch=BATCH_TOKENS, n_ubatch=BATCH_TOKENS,
                      n_threads=settings.threads, n_threads_batch=settings.threads, n_gpu_layers=0, verbose=False,
                      flash_attn=True)  # as the lab's llama.cpp runner runs (core/runtimes/llamacpp.py)
        self.lookup = CountingLookup(max_ngram_size=settings.max_ngram, num_pred_tokens=settings.draft_tokens)
        self.plain_llm, self.lookup_llm = Llama(**common), Llama(**common, draft_model=self.lookup)
        self.tokenizer, self.model_file = tokenizer, str(path)
        self.stop_ids = {i for i in (tokenizer.eos_token_id, self.plain_llm.token_eos()) if i is not None and i >= 0}

    def generate(self, ids: torch.Tensor, new_tokens: int, lookup: bool) -> Decode:
        llm = self.lookup_llm if lookup else self.plain_llm
        llm.reset()  # no KV-cache reuse from the last call: every run reads its prompt afresh
        self.lookup.proposals.clear()
        prompt = [int(t) for t in ids.reshape(-1).tolist()]
        tokens, times = [], []
        t0 = time.perf_counter()
        for token in llm.generate(prompt, temp=0.0, repeat_penalty=1.0, reset=True):
            tokens.append(int(token))
            times.append(time.perf_counter() - t0)
            if token in self.stop_ids or len(tokens) >= new_tokens:
                break
        drafted = accepted = 0
        if lookup:
            out = np.asarray(tokens)
            for length, drafts in self.lookup.proposals:
                start = length - len(prompt)  # the drafts guess out[start:]
                drafted += len(drafts)
                guessed = out[start:start + len(drafts)]
                hits = np.asarray(drafts[:len(guessed)]) == guessed
                accepted += int(np.cumprod(hits).sum()) if len(guessed) else 0
        return Decode(tuple(tokens), times[0], times[-1], 1, drafted, accepted)

    def text(self, tokens) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)


# ---------------------------------------------------------------- one prompt set on one runtime


@dataclass
class PromptLookupResult(benchmark.Provenance):
    run_id: str  # shared by every (runtime, prompt set) of one command
    created_at: str
    model: str
    runtime: str
    technique: str  # what was run: "fp32" on transformers, the GGUF technique on llama.cpp
    model_file: str
    prompt_set: str
    prompt_file: str
    draft_tokens: int
    max_ngram: int
    new_tokens: int  # at most, per answer
    repeats: int
    prompts_total: int
    identical_outputs: int  # prompts whose lookup output equals plain greedy's, token for token, in every repeat
    acceptance_rate: float  # accepted draft tokens / drafted tokens
    drafted_tokens: int
    accepted_tokens: int
    plain_decode_tokens_per_s: float  # tokens after the first pass / their seconds, summed over the prompts
    lookup_decode_tokens_per_s: float
    speedup: float  # lookup / plain decode tokens per second
    speedup_per_prompt: dict  # median, p10, p90
    settings: dict
    prompts: list[dict] = field(default_factory=list)

    @property
    def identical_output(self) -> bool:
        return self.identical_outputs == self.prompts_total


def _median_run(runs: list[Decode]) -> Decode:
    return sorted(runs, key=lambda r: r.decode_s)[len(runs) // 2]


def measure_set(decoder, prompts: list[dict], settings: LookupSettings, say: Report, stop) -> list[dict]:
    """Per prompt: `repeats` plain and lookup runs, interleaved; the median decode time of each is kept."""
    ids_of = [models.chat_prompt_ids(decoder.tokenizer, p["prompt"]) for p in prompts]
    decoder.generate(ids_of[0], 8, False)  # warm-up of each mode
    decoder.generate(ids_of[0], 8, True)
    rows = []
    for i, (p, ids) in enumerate(zip(prompts, ids_of)):
        if stop():
            raise Stopped(f"Stopped after {i} of {len(prompts)} prompts.")
        say(i / len(prompts), f"{decoder.runtime}: prompt {i + 1}/{len(prompts)}: {p.get('title', '')}")
        plain_runs, lookup_runs = [], []
        for _ in range(settings.repeats):
            plain_runs.append(decoder.generate(ids, settings.new_tokens, False))
            lookup_runs.append(decoder.generate(ids, settings.new_tokens, True))
        plain, look = _median_run(plain_runs), _median_run(lookup_runs)
        identical = all(r.tokens == plain_runs[0].tokens for r in plain_runs + lookup_runs)
        rows.append({
            "title": p.get("title", ""), "prompt": p["prompt"], "prompt_tokens": int(ids.shape[-1]),
            "identical": identical, "tokens": len(plain.tokens), "lookup_tokens": len(look.tokens),
            "plain_decode_tokens": plain.decode_tokens, "plain_decode_s": plain.decode_s,
            "lookup_decode_tokens": look.decode_tokens, "lookup_decode_s": look.decode_s,
            "plain_decode_s_samples": [r.decode_s for r in plain_runs],
            "lookup_decode_s_samples": [r.decode_s for r in lookup_runs],
            "plain_ttft_ms": plain.first_s * 1e3, "lookup_ttft_ms": look.first_s * 1e3,
            "drafted": look.drafted, "accepted": look.accepted,
            "acceptance_rate": look.accepted / look.drafted if look.drafted else 0.0,
            "text": decoder.text(plain.tokens),
            "lookup_text": decoder.text(look.tokens),
        })
    return rows


def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else float("nan")


def summarize(rows: list[dict], **identity) -> PromptLookupResult:
    plain = _rate(sum(r["plain_decode_tokens"] for r in rows), sum(r["plain_decode_s"] for r in rows))
    look = _rate(sum(r["lookup_decode_tokens"] for r in rows), sum(r["lookup_decode_s"] for r in rows))
    per_prompt = [_rate(r["lookup_decode_tokens"], r["lookup_decode_s"]) / _rate(r["plain_decode_tokens"],
                                                                                  r["plain_decode_s"])
                  for r in rows if r["plain_decode_s"] > 0 and r["lookup_decode_s"] > 0]
    spread = benchmark.Spread(tuple(per_prompt)) if per_prompt else None
    drafted, accepted = sum(r["drafted"] for r in rows), sum(r["accepted"] for r in rows)
    return PromptLookupResult(
        prompts_total=len(rows), identical_outputs=sum(r["identical"] for r in rows),
        acceptance_rate=accepted / drafted if drafted else 0.0, drafted_tokens=drafted, accepted_tokens=accepted,
        plain_decode_tokens_per_s=plain, lookup_decode_tokens_per_s=look, speedup=look / plain,
        speedup_per_prompt={"median": spread.median, "p10": spread.p10, "p90": spread.p90} if spread else {},
        prompts=rows, **identity)


# ---------------------------------------------------------------- the whole run


def _decoders(settings: LookupSettings, model_name: str, say: Report):
    """(runtime, technique key, decoder) for each runtime asked for; models load one runtime at a time."""
    spec = models.resolve(model_name)
    checkpoint = models.prepare(spec)
    tokenizer = models.load_tokenizer(checkpoint)
    for runtime in settings.runtimes:
        if runtime == "transformers":
            say(0.0, "loading the fp32 checkpoint into transformers")
            yield runtime, techniques.REFERENCE, TransformersDecoder(
                models.load_model(checkpoint, torch.float32, "cpu"), tokenizer, settings, str(checkpoint))
        else:
            path, _facts = techniques.get(settings.technique).artifact(checkpoint, settings.threads,
                                                                       lambda m: say(0.0, m))
            say(0.0, f"loading {path.name} into llama.cpp")
            yield runtime, settings.technique, LlamaCppDecoder(path, tokenizer, settings)


def run_prompt_lookup(model_name: str = models.DEFAULT_MODEL, settings: LookupSettings | None = None,
                      report: Report | None = None, should_stop: Callable[[], bool] | None = None
                      ) -> list[PromptLookupResult]:
    """One result per (runtime, prompt set): plain greedy against prompt lookup, on the CPU at `threads` threads."""
    settings = settings or LookupSettings()
    say, stop = report or (lambda f, m: None), should_stop or (lambda: False)
    sets = check_request(settings)
    run_id, results = uuid.uuid4().hex[:12], []
    before = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        env = benchmark.environment("cpu", settings.threads)
        for runtime, technique, decoder in _decoders(settings, model_name, say):
            for (name, prompts), path in zip(sets, settings.prompt_files):
                with benchmark.timing_phase():  # the presenter's job panel pauses meanwhile (ui/panel.py)
                    rows = measure_set(decoder, prompts, settings, say, stop)
                results.append(summarize(
                    rows, run_id=run_id, created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    model=models.resolve(model_name).key, runtime=runtime, technique=technique,
                    model_file=decoder.model_file, prompt_set=name, prompt_file=str(path),
                    draft_tokens=settings.draft_tokens, max_ngram=settings.max_ngram,
                    new_tokens=settings.new_tokens, repeats=settings.repeats,
                    settings={**asdict(settings), "decoding": "greedy", "device": "cpu",
                              "stop": "end-of-turn token or new_tokens, the same for both modes",
                              "timing": "decode = after the first pass; median of repeats per prompt"},
                    **env.provenance()))
            del decoder
    finally:
        torch.set_num_threads(before)
    say(1.0, "done")
    return results


def results_path() -> Path:
    return data_dir() / "hybrids" / "prompt_lookup.jsonl"


def save_results(results: list[PromptLookupResult]) -> None:
    """Appended, one line per result, as speculative decoding's results are: earlier lines are never rewritten."""
    jsonl.append(results_path(), [r.to_dict() for r in results])


def saved_results() -> list[dict]:
    """Newest first; a line cut short by a crash is skipped."""
    return jsonl.read_newest_first(results_path())
