"""Speculative decoding: a small draft model guesses a few tokens, the big model checks them all in one pass.

Greedy speculative decoding keeps exactly the big model's output: a drafted token is kept only where the
big model would have chosen it, and the big model's own next token follows the first miss. It pays off
when one pass over k+1 tokens costs little more than a pass over one (the big model is bandwidth-bound,
as on a GPU) and the draft is both much cheaper and usually right. We use transformers' assisted
generation and count forward passes to get the acceptance rate.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from core import models
from core.measure import benchmark
from core.paths import ASSETS, Stopped, data_dir
from core.store import jsonl

Report = Callable[[float, str], None]


def check_same_tokenizer(tokenizer, draft_tokenizer, draft_name: str) -> None:
    """Drafted token ids are verified by the big model as they are: both must mean the same thing by each id."""
    if tokenizer.get_vocab() != draft_tokenizer.get_vocab():
        a, b = len(tokenizer.get_vocab()), len(draft_tokenizer.get_vocab())
        raise ValueError(f"The draft {draft_name} uses a different tokenizer ({b:,} tokens vs the model's {a:,}, or the "
                         "same size with other ids): speculative decoding here needs a draft with the model's own "
                         "tokenizer, such as a student distilled from it.")


class ForwardCounter:
    """Counts a module's forward calls (one per pass, whatever the number of tokens in it)."""
    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def close(self) -> None:
        self._handle.remove()


@dataclass(frozen=True)
class Generation:
    tokens: tuple[int, ...]
    seconds: float
    target_passes: int
    drafted: int  # tokens the draft proposed (one per draft forward pass); 0 without a draft

    @property
    def accepted(self) -> int:
        """Each verifying pass yields the accepted drafts plus one token of the big model's own."""
        return max(0, len(self.tokens) - self.target_passes) if self.drafted else 0


def configure_draft(draft, draft_tokens: int) -> None:
    """A fixed draft length and no confidence cut-off, so the counts are simple to read and reproduce."""
    if draft_tokens < 1:
        raise ValueError(f"draft_tokens must be at least 1, got {draft_tokens}")
    gc = draft.generation_config
    gc.num_assistant_tokens = draft_tokens
    gc.num_assistant_tokens_schedule = "constant"
    gc.assistant_confidence_threshold = 0.0


@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, pad_token_id: int, draft=None,
             device: str = "cpu") -> Generation:
    """Greedy generation (stops at EOS), with or without a draft; timed and counted."""
    target, drafter = ForwardCounter(model), ForwardCounter(draft) if draft is not None else None
    try:
        ids = input_ids.to(device)
        benchmark.synchronize(device)
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=pad_token_id, assistant_model=draft)
        benchmark.synchronize(device)
        seconds = time.perf_counter() - t0
    finally:
        target.close()
        if drafter is not None:
            drafter.close()
    tokens = tuple(int(t) for t in out[0, ids.shape[1]:])
    return Generation(tokens, seconds, target.calls, drafter.calls if drafter else 0)


@dataclass
class SpeculativeResult(benchmark.Provenance):
    model: str
    draft: str
    draft_facts: dict
    draft_tokens: int
    max_new_tokens: int
    identical_output: bool
    acceptance_rate: float  # accepted drafted tokens / drafted tokens
    tokens_per_pass: float  # tokens the big model kept per verifying pass (1.0 = no gain possible)
    speedup: float  # plain time / assisted time, summed over the prompts
    speedup_per_prompt: dict  # median, p10, p90
    plain_tokens_per_s: float
    assisted_tokens_per_s: float
    prompts: list[dict]
    created_at: str



def bundled_prompts() -> list[dict]:
    return json.loads((ASSETS / "prompts.json").read_text())


def _time_prompts(model, draft, tokenizer, prompts, max_new_tokens: int, pad, device: str, say, stop) -> list[dict]:
    """Each prompt generated plainly and with the draft, back to back, after one warm-up of each."""
    warm = models.chat_prompt_ids(tokenizer, prompts[0]["prompt"])
    generate(model, warm, 8, pad, None, device)
    generate(model, warm, 8, pad, draft, device)
    rows = []
    for i, p in enumerate(prompts):
        if stop():
            raise Stopped(f"Stopped after {i} of {len(prompts)} prompts.")
        say(i / len(prompts), f"prompt {i + 1}/{len(prompts)}: {p.get('title', p['prompt'][:30])}")
        ids = models.chat_prompt_ids(tokenizer, p["prompt"])
        plain = generate(model, ids, max_new_tokens, pad, None, device)
        assisted = generate(model, ids, max_new_tokens, pad, draft, device)
        rows.append({
            "title": p.get("title", ""), "prompt": p["prompt"], "identical": plain.tokens == assisted.tokens,
            "tokens": len(plain.tokens), "plain_s": plain.seconds, "assisted_s": assisted.seconds,
            "speedup": plain.seconds / assisted.seconds, "drafted": assisted.drafted, "accepted": assisted.accepted,
            "target_passes": assisted.target_passes,
            "acceptance_rate": assisted.accepted / assisted.drafted if assisted.drafted else 0.0,
            "text": tokenizer.decode(list(plain.tokens), skip_special_tokens=True),
            "assisted_text": tokenizer.decode(list(assisted.tokens), skip_special_tokens=True),
        })
    return rows

def run_speculate(model_name: str, draft_path: str, draft_tokens: int = 4, max_new_tokens: int = 64,
                  prompts: list[dict] | None = None, report: Report | None = None,
                  should_stop: Callable[[], bool] | None = None, device: str = "auto") -> SpeculativeResult:
    """On each prompt: warm up, then time the model alone and with the draft; compare outputs token by token."""
    say = report or (lambda f, m: None)
    stop = should_stop or (lambda: False)
    if max_new_tokens < 2:
        raise ValueError(f"max_new_tokens must be at least 2, got {max_new_tokens}")
    device = benchmark.pick_device(device)
    spec, draft_spec = models.resolve(model_name), models.resolve(draft_path)
    checkpoint, draft_checkpoint = models.prepare(spec), models.prepare(draft_spec)
    tokenizer = models.load_tokenizer(checkpoint)
    check_same_tokenizer(tokenizer, models.load_tokenizer(draft_checkpoint), draft_spec.label)
    model = models.load_model(checkpoint, torch.float32, device)
    draft = models.load_model(draft_checkpoint, torch.float32, device)
    configure_draft(draft, draft_tokens)
    prompts = prompts if prompts is not None else bundled_prompts()[:10]
    pad = tokenizer.pad_token_id

    with benchmark.timing_phase():  # the presenter's job panel pauses meanwhile (ui/panel.py)
        rows = _time_prompts(model, draft, tokenizer, prompts, max_new_tokens, pad, device, say, stop)
    say(1.0, "done")
    drafted, accepted = sum(r["drafted"] for r in rows), sum(r["accepted"] for r in rows)
    plain_s, assisted_s = sum(r["plain_s"] for r in rows), sum(r["assisted_s"] for r in rows)
    tokens, passes = sum(r["tokens"] for r in rows), sum(r["target_passes"] for r in rows)
    per_prompt = benchmark.Spread(tuple(r["speedup"] for r in rows))
    env = benchmark.environment(device, torch.get_num_threads())
    facts_file = Path(draft_checkpoint) / "lab_student.json"
    return SpeculativeResult(
        model=spec.key, draft=str(draft_checkpoint),
        draft_facts=json.loads(facts_file.read_text()) if facts_file.is_file() else {},
        draft_tokens=draft_tokens, max_new_tokens=max_new_tokens,
        identical_output=all(r["identical"] for r in rows),
        acceptance_rate=accepted / drafted if drafted else 0.0,
        tokens_per_pass=tokens / passes if passes else 0.0,
        speedup=plain_s / assisted_s,
        speedup_per_prompt={"median": per_prompt.median, "p10": per_prompt.p10, "p90": per_prompt.p90},
        plain_tokens_per_s=tokens / plain_s, assisted_tokens_per_s=tokens / assisted_s, prompts=rows,
        **env.provenance(),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def results_path() -> Path:
    return data_dir() / "distill" / "speculative.jsonl"


def save_result(result: SpeculativeResult) -> None:
    """Appended as one line: earlier results are never rewritten, so a crash cannot lose them."""
    jsonl.append(results_path(), [result.to_dict()])


def saved_results() -> list[dict]:
    """Newest first; a line cut short by a crash is skipped."""
    return jsonl.read_newest_first(results_path())
