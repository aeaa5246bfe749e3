"""A draft model on llama.cpp: llama-server's own speculative decoding, a small GGUF drafting for a GGUF target.

The draft (the distilled student exported to GGUF, or any GGUF file with the target's vocabulary) proposes up to
`draft_max_tokens` tokens one at a time; the target checks them all in one batched pass and keeps the ones it would
have chosen itself, so greedy decoding gives the target's own answer. What changes is the speed: a draft that is much
cheaper than the target and often right saves target passes; one that is nearly as costly, or often wrong, loses.

Measured as deployed: `llama-server` (the lab's pinned llama.cpp build, started by the serving axis's Server on
127.0.0.1) once without a draft and once per draft length with it (`--spec-type draft-simple --spec-draft-model`),
on the same target file, threads and prompts, requests interleaved prompt by prompt so load drifts hit every server.
Speeds and draft counts are the server's own (`timings` of each /completion: predicted_n / predicted_ms, draft_n,
draft_n_accepted); outputs are compared token for token (`return_tokens`).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import gguf
import httpx2

from core import models, techniques
from core.hybrids.prompt_lookup import PROMPT_FILES, load_prompt_set
from core.measure import benchmark
from core.models.saved import SavedStudent, saved_students, student_key
from core.paths import Stopped, data_dir
from core.runtimes import llamacpp_build
from core.serving.engines import Engine, llama_server_engine
from core.serving.limits import REQUEST_TIMEOUT_S, ServingError
from core.serving.server import Server
from core.store import jsonl

Report = Callable[[float, str], None]
DRAFT_MAX_RANGE = (1, 32)  # tokens drafted per target pass
NEW_TOKENS_RANGE = (2, 1024)  # prompt + answer must fit CONTEXT_TOKENS
CONTEXT_TOKENS = 2048  # per server: the longest bundled prompt plus 1024 new tokens fit
STUDENT = "student"  # --draft value: the newest finished distilled student of the model, exported to GGUF


@dataclass(frozen=True)
class DraftSettings:
    target: str = "gguf-q8_0"  # the GGUF technique the target runs as
    draft: str = STUDENT  # "student", a GGUF technique key ("gguf-q2_k", "<student>+gguf-q8_0") or a .gguf path
    student_quant: str = "gguf-q8_0"  # how a student is exported when draft is "student"
    draft_max_tokens: tuple[int, ...] = (3, 8)  # one drafted server (and one result) per value; 3 is llama.cpp's own
    draft_min_tokens: int = 0  # llama-server drafts nothing when fewer would be proposed (its default)
    draft_p_min: float = 0.0  # the draft stops proposing below this probability of its own top token (its default)
    new_tokens: int = 64  # at most; every server stops at the model's end-of-turn token
    repeats: int = 3  # timed runs of each server per prompt after one warm-up; the median is kept
    threads: int = 2
    prompt_files: tuple[str, ...] = tuple(str(p) for p in PROMPT_FILES)

    def __post_init__(self):
        lo, hi = DRAFT_MAX_RANGE
        if not self.draft_max_tokens or not all(lo <= n <= hi for n in self.draft_max_tokens):
            raise ValueError(f"draft max tokens must each be between {lo} and {hi}, got {self.draft_max_tokens}")
        if not 0 <= self.draft_min_tokens <= min(self.draft_max_tokens):
            raise ValueError(f"draft min tokens must be between 0 and the smallest draft max "
                             f"({min(self.draft_max_tokens)}), got {self.draft_min_tokens}")
        if not 0.0 <= self.draft_p_min <= 1.0:
            raise ValueError(f"draft p-min is a probability between 0 and 1, got {self.draft_p_min}")
        lo, hi = NEW_TOKENS_RANGE
        if not lo <= self.new_tokens <= hi:
            raise ValueError(f"new tokens must be between {lo} and {hi}, got {self.new_tokens}")
        if self.repeats < 1 or self.threads < 1 or not self.prompt_files or not self.draft.strip():
            raise ValueError(f"repeats and threads must be at least 1 (got {self.repeats}, {self.threads}), and a "
                             f"prompt file and a draft ({STUDENT!r}, a GGUF technique key or a .gguf file) are needed")


# ---------------------------------------------------------------- vocabulary (pure, from GGUF metadata)


@dataclass(frozen=True)
class Vocabulary:
    model: str  # tokenizer.ggml.model: "gpt2", "llama", ...
    tokens: tuple[str, ...]
    bos: int | None
    eos: int | None


def read_vocabulary(path: Path) -> Vocabulary:
    """The tokenizer a GGUF file carries; a clear error for a file that is not GGUF or holds no tokenizer."""
    try:
        fields = gguf.GGUFReader(path).fields
    except (ValueError, OSError, IndexError) as e:  # a file without the GGUF magic, or cut short
        raise ValueError(f"{path} is not a readable GGUF file ({e}); pass a .gguf file made by llama.cpp or the "
                         "lab") from e
    if "tokenizer.ggml.tokens" not in fields:
        raise ValueError(f"{path} holds no tokenizer (no tokenizer.ggml.tokens); llama.cpp cannot use it as a draft")

    def value(key: str):
        return fields[key].contents() if key in fields else None

    return Vocabulary(str(value("tokenizer.ggml.model")), tuple(value("tokenizer.ggml.tokens")),
                      value("tokenizer.ggml.bos_token_id"), value("tokenizer.ggml.eos_token_id"))


def vocabulary_difference(target: Vocabulary, draft: Vocabulary) -> str | None:
    """None when a draft's tokens mean what the target's mean (same tokenizer, same ids); else the first difference.
    Stricter than llama.cpp's own check, which tolerates a few extra tokens: an id the target reads differently
    would silently change which drafts are kept."""
    if target.model != draft.model:
        return f"tokenizer model {draft.model!r} where the target has {target.model!r}"
    if len(target.tokens) != len(draft.tokens):
        return f"{len(draft.tokens)} tokens where the target has {len(target.tokens)}"
    for i, (a, b) in enumerate(zip(target.tokens, draft.tokens)):
        if a != b:
            return f"token {i} is {b!r} where the target has {a!r}"
    if (target.bos, target.eos) != (draft.bos, draft.eos):
        return f"begin/end ids {draft.bos}/{draft.eos} where the target has {target.bos}/{target.eos}"
    return None


def check_same_vocabulary(target: Path, draft: Path) -> None:
    if (why := vocabulary_difference(read_vocabulary(target), read_vocabulary(draft))) is not None:
        raise ValueError(f"the draft {draft} has another vocabulary than the target {target.name}: {why}. A draft must "
                         "share the target's tokenizer: a student distilled from the target's model, or another GGUF "
                         "file of the same model")


# ---------------------------------------------------------------- what to run, refused before anything is built


def newest_student(model_key: str) -> SavedStudent:
    done = [s for s in saved_students() if s.facts.get("complete") and s.facts.get("teacher") == model_key]
    if not done:
        raise ValueError(f"no finished distilled student of {model_key} is saved; distil one (`python -m core "
                         "distill`), or pass --draft PATH.gguf or a GGUF variant of the model such as gguf-q2_k")
    return done[0]  # saved_students() lists the newest run first


def is_draft_file(draft: str) -> bool:
    """The draft names a file (a .gguf path), not a technique key or "student"."""
    return draft.endswith(".gguf") or os.sep in draft


def draft_technique(settings: DraftSettings, model_key: str) -> str | None:
    """The registry key the draft is built as, or None when it is a file the user named."""
    if is_draft_file(settings.draft):
        return None
    if settings.draft == STUDENT:
        s = newest_student(model_key)
        key = f"{student_key(s.facts['student_layers'], s.facts['run'])}+{settings.student_quant}"
    else:
        key = settings.draft
    if techniques.get(key).family != "gguf":  # get() names the known keys for an unknown one
        raise ValueError(f"the draft {key!r} is not a GGUF variant; llama.cpp drafts with a GGUF file "
                         f"(pass {STUDENT!r}, gguf-<quant> or a .gguf path)")
    return key


def check_request(settings: DraftSettings, model_name: str = models.DEFAULT_MODEL) -> list[tuple[str, list[dict]]]:
    """Everything that can be refused before a file is built or a server starts; returns the prompt sets."""
    sets = [load_prompt_set(p) for p in settings.prompt_files]
    names = [n for n, _ in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"two prompt files share a set name: {names}")
    if techniques.get(settings.target).family != "gguf":
        raise ValueError(f"the target runs on llama.cpp from a GGUF file; {settings.target!r} is not one "
                         "(choose a gguf-* technique, e.g. gguf-q8_0)")
    if (problem := llamacpp_build.why_not_tools()) is not None:
        raise ValueError(problem)
    spec = models.resolve(model_name)
    if draft_technique(settings, spec.key) is None:
        path = Path(settings.draft).expanduser()
        if not path.is_file():
            raise ValueError(f"draft file not found: {path}; pass an existing .gguf file, {STUDENT!r} or a GGUF "
                             "technique key such as gguf-q2_k")
        # a model that ships as one GGUF file carries the target's tokenizer: check before anything is built
        if spec.source == "bundled-gguf" and not spec.chunked and (shipped := models.gguf_path(spec)) is not None:
            check_same_vocabulary(shipped, path)
    return sets


# ---------------------------------------------------------------- the servers and one answer


def drafted_engine(plain: Engine, draft: Path, settings: DraftSettings, draft_max: int) -> Engine:
    """The target's llama-server engine with llama.cpp's draft-model speculation on `draft`, CPU only."""
    flags = ["--spec-type", "draft-simple", "--spec-draft-model", str(draft), "--spec-draft-ngl", "0",
             "--spec-draft-n-max", str(draft_max), "--spec-draft-n-min", str(settings.draft_min_tokens),
             "--spec-draft-p-min", str(settings.draft_p_min)]
    base = plain.argv
    return replace(plain, argv=lambda port: [*base(port), *flags],
                   server=f"llama-server with a GGUF draft of up to {draft_max} tokens")


def post(server: Server, path: str, body: dict) -> dict:
    r = httpx2.post(f"{server.base_url}{path}", json=body, timeout=REQUEST_TIMEOUT_S)
    if r.status_code != 200:
        server.check_alive()
        raise ServingError(f"{server.engine.server} answered {r.status_code} to {path}: {r.text[:300]}")
    return r.json()


def complete(server: Server, prompt: str, new_tokens: int) -> dict:
    # greedy and seeded, stopping at end-of-turn; cache_prompt off so every run reads its prompt afresh
    return post(server, "/completion", {"prompt": prompt, "n_predict": new_tokens, "temperature": 0.0, "top_k": 1,
                                        "seed": 0, "cache_prompt": False, "return_tokens": True})


@dataclass(frozen=True)
class Answer:
    tokens: tuple[int, ...]
    text: str
    prompt_tokens: int
    ttft_ms: float  # the prompt pass (prompt_ms), as the server timed it
    decode_tokens: int  # predicted_n
    decode_s: float  # predicted_ms / 1000
    drafted: int  # draft_n: tokens the draft proposed (0 without a draft)
    accepted: int  # draft_n_accepted: of those, kept by the target


def answer_of(response: dict) -> Answer:
    t = response["timings"]
    return Answer(tuple(int(x) for x in response.get("tokens", [])), response.get("content", ""), int(t["prompt_n"]),
                  float(t["prompt_ms"]), int(t["predicted_n"]), float(t["predicted_ms"]) / 1e3,
                  int(t.get("draft_n", 0)), int(t.get("draft_n_accepted", 0)))


# ---------------------------------------------------------------- per prompt, and the summary


@dataclass
class GGUFDraftResult(benchmark.Provenance):
    run_id: str  # shared by every (draft max, prompt set) of one command
    created_at: str
    model: str
    runtime: str  # "llama.cpp"
    technique: str  # the target's GGUF technique
    target_file: str
    draft: str  # what was asked: "student", a technique key or a path
    draft_technique: str  # the registry key the draft was built as ("" for a file the user named)
    draft_file: str
    draft_facts: dict  # size_bytes of the draft file, and the student's facts when it is one
    draft_max_tokens: int
    draft_min_tokens: int
    draft_p_min: float
    prompt_set: str
    prompt_file: str
    new_tokens: int  # at most, per answer
    repeats: int
    prompts_total: int
    identical_outputs: int  # prompts whose drafted answer equals the plain one, token for token, in every repeat
    acceptance_rate: float  # accepted / drafted tokens, summed over the prompts
    drafted_tokens: int
    accepted_tokens: int
    plain_decode_tokens_per_s: float  # decode tokens / seconds, summed over the prompts
    drafted_decode_tokens_per_s: float
    speedup: float  # drafted / plain decode tokens per second
    speedup_per_prompt: dict  # median, p10, p90 of the per-prompt ratios
    settings: dict
    prompts: list[dict] = field(default_factory=list)

    @property
    def identical_output(self) -> bool:
        return self.identical_outputs == self.prompts_total


def _median(answers: list[Answer]) -> Answer:
    return sorted(answers, key=lambda a: a.decode_s)[len(answers) // 2]


def prompt_row(title: str, prompt: str, plain: list[Answer], drafted: list[Answer]) -> dict:
    """One prompt's repeats on both servers: the median-time run of each, and whether every answer matched."""
    p, d = _median(plain), _median(drafted)
    return {"title": title, "prompt": prompt, "prompt_tokens": p.prompt_tokens,
            "identical": all(a.tokens == plain[0].tokens for a in plain + drafted), "tokens": len(p.tokens),
            "drafted_tokens_out": len(d.tokens), "plain_decode_tokens": p.decode_tokens, "plain_decode_s": p.decode_s,
            "drafted_decode_tokens": d.decode_tokens, "drafted_decode_s": d.decode_s,
            "plain_decode_s_samples": [a.decode_s for a in plain],
            "drafted_decode_s_samples": [a.decode_s for a in drafted],
            "plain_ttft_ms": p.ttft_ms, "drafted_ttft_ms": d.ttft_ms, "drafted": d.drafted, "accepted": d.accepted,
            "acceptance_rate": d.accepted / d.drafted if d.drafted else 0.0, "text": p.text, "drafted_text": d.text}


def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else float("nan")


def summarize(rows: list[dict], **identity) -> GGUFDraftResult:
    plain = _rate(sum(r["plain_decode_tokens"] for r in rows), sum(r["plain_decode_s"] for r in rows))
    drafted = _rate(sum(r["drafted_decode_tokens"] for r in rows), sum(r["drafted_decode_s"] for r in rows))
    ratios = [_rate(r["drafted_decode_tokens"], r["drafted_decode_s"])
              / _rate(r["plain_decode_tokens"], r["plain_decode_s"])
              for r in rows if r["plain_decode_s"] > 0 and r["drafted_decode_s"] > 0]
    spread = benchmark.Spread(tuple(ratios)) if ratios else None
    n_drafted, n_accepted = sum(r["drafted"] for r in rows), sum(r["accepted"] for r in rows)
    return GGUFDraftResult(
        prompts_total=len(rows), identical_outputs=sum(r["identical"] for r in rows),
        acceptance_rate=n_accepted / n_drafted if n_drafted else 0.0, drafted_tokens=n_drafted,
        accepted_tokens=n_accepted, plain_decode_tokens_per_s=plain, drafted_decode_tokens_per_s=drafted,
        speedup=drafted / plain,
        speedup_per_prompt={"median": spread.median, "p10": spread.p10, "p90": spread.p90} if spread else {},
        prompts=rows, **identity)


def measure_prompts(plain: Server, drafted: dict[int, Server], prompts: list[dict], settings: DraftSettings,
                    say: Report, stop) -> dict[int, list[dict]]:
    """draft max -> rows: per prompt and repeat, the plain server then each drafted one, so load drifts hit all."""
    # the chat template the GGUF file carries, applied by the server itself: every server reads the same text
    texts = [post(plain, "/apply-template", {"messages": [{"role": "user", "content": p["prompt"]}]})["prompt"]
             for p in prompts]
    for server in (plain, *drafted.values()):
        complete(server, texts[0], 8)  # warm-up: first-call allocations out of the timed runs
    rows: dict[int, list[dict]] = {n: [] for n in drafted}
    for i, (p, text) in enumerate(zip(prompts, texts)):
        if stop():
            raise Stopped(f"Stopped after {i} of {len(prompts)} prompts; nothing was stored.")
        say(i / len(prompts), f"prompt {i + 1}/{len(prompts)}: {p.get('title', '')}")
        runs: dict[int, list[Answer]] = {0: [], **{n: [] for n in drafted}}
        for _ in range(settings.repeats):
            runs[0].append(answer_of(complete(plain, text, settings.new_tokens)))
            for n, server in drafted.items():
                runs[n].append(answer_of(complete(server, text, settings.new_tokens)))
        for n in drafted:
            rows[n].append(prompt_row(p.get("title", ""), p["prompt"], runs[0], runs[n]))
    return rows


# ---------------------------------------------------------------- the whole run


def _files(settings: DraftSettings, model_name: str, say: Report) -> tuple[Path, Path, str, dict]:
    """(target file, draft file, draft technique key or "", draft facts), built once each and cached."""
    spec = models.resolve(model_name)
    checkpoint = models.prepare(spec)
    target, _ = techniques.get(settings.target).artifact(checkpoint, settings.threads, lambda m: say(0.0, m))
    key = draft_technique(settings, spec.key)
    if key is None:
        draft = Path(settings.draft).expanduser().resolve()
        facts = {"size_bytes": draft.stat().st_size}
    else:
        say(0.0, f"building the draft {key}")
        draft, facts = techniques.get(key).artifact(checkpoint, settings.threads, lambda m: say(0.0, m))
        if settings.draft == STUDENT:
            facts = {**facts, "student": newest_student(spec.key).facts}
    check_same_vocabulary(target, draft)
    return Path(target), Path(draft), key or "", facts


def _settings_facts(settings: DraftSettings) -> dict:
    return {**asdict(settings), "decoding": "greedy (temperature 0, top_k 1, seed 0)", "device": "cpu",
            "server": "llama-server, 1 slot, cache_prompt off", "context_tokens": CONTEXT_TOKENS,
            "stop": "end-of-turn token or new_tokens, the same for every server",
            "timing": "the server's own timings: decode = predicted_n / predicted_ms; median of repeats per prompt"}


def run_gguf_draft(model_name: str = models.DEFAULT_MODEL, settings: DraftSettings | None = None,
                   report: Report | None = None, should_stop: Callable[[], bool] | None = None
                   ) -> list[GGUFDraftResult]:
    """One result per (draft max, prompt set): the target alone against the target with the draft, on llama-server."""
    settings = settings or DraftSettings()
    say, stop = report or (lambda f, m: None), should_stop or (lambda: False)
    sets = check_request(settings, model_name)
    target, draft, key, facts = _files(settings, model_name, say)
    plain = llama_server_engine(target, settings.target, slots=1, ctx_per_slot=CONTEXT_TOKENS, threads=settings.threads)
    env, run_id, results = benchmark.environment("cpu", settings.threads), uuid.uuid4().hex[:12], []
    say(0.0, f"starting llama-server on {target.name}, alone and with the draft {draft.name}")
    with contextlib.ExitStack() as servers:  # every server started is stopped, whatever happens
        alone = servers.enter_context(Server(plain, should_stop=stop))
        drafted = {n: servers.enter_context(Server(drafted_engine(plain, draft, settings, n), should_stop=stop))
                   for n in settings.draft_max_tokens}
        for (name, prompts), path in zip(sets, settings.prompt_files):
            with benchmark.timing_phase():
                rows = measure_prompts(alone, drafted, prompts, settings, say, stop)
            results += [summarize(
                rows[n], run_id=run_id, created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                model=models.resolve(model_name).key, runtime="llama.cpp", technique=settings.target,
                target_file=str(target), draft=settings.draft, draft_technique=key, draft_file=str(draft),
                draft_facts=facts, draft_max_tokens=n, draft_min_tokens=settings.draft_min_tokens,
                draft_p_min=settings.draft_p_min, prompt_set=name, prompt_file=str(path),
                new_tokens=settings.new_tokens, repeats=settings.repeats, settings=_settings_facts(settings),
                **env.provenance()) for n in settings.draft_max_tokens]
    say(1.0, "done")
    return results


def results_path() -> Path:
    return data_dir() / "hybrids" / "gguf_draft.jsonl"


def save_results(results: list[GGUFDraftResult]) -> None:
    """Appended, one line per result: earlier lines are never rewritten."""
    jsonl.append(results_path(), [r.to_dict() for r in results])


def saved_results() -> list[dict]:
    """Newest first; a line cut short by a crash is skipped."""
    return jsonl.read_newest_first(results_path())
