"""Job kinds: typed arguments from the page to the worker, one registry, one launch path, and who may run what."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from core.experiments.sweep import SweepSettings
from core.experiments.task_run import TaskSettings
from core.hybrids import classical, gguf_draft, model_cascade, prompt_lookup
from core.launch import kinds, worker
from core.launch.execute import check_allowed
from core.launch.job import Job
from core.launch.jobqueue import PRESENTER, JobQueue, NotAllowed
from core.launch.job import JobArgs
from core.launch.kinds.base import JobKind, register
from core.launch.launch import launch, submit
from core.paths import ASSETS
from core.serving.bench import ServeSettings
from core.serving.memory_bench import MemorySettings
from core.techniques.distillation import DistillSettings
from core.techniques.lora import FinetuneSettings

ROOT = Path(__file__).resolve().parent.parent
VIEWER_FILES = "A viewer's job can read only files uploaded through the page or shipped with the lab."

SAMPLES = {  # one of each kind, with its nested settings and tuples, as pages and the CLI build them
    "sweep": kinds.SweepArgs("tiny-random-llama", ("fp32", "nf4"), SweepSettings(new_tokens=4), devices=("cpu",)),
    "moe": kinds.MoeArgs("tiny-random-llama", 8, (1, 2), dense_layers=0, settings=SweepSettings(repeats=2)),
    "budget": kinds.BudgetArgs("tiny-random-llama", (100_000, 150_000), imatrix=True),
    "lora": kinds.LoraArgs("tiny-random-llama", FinetuneSettings(steps=3, target_modules=("q_proj",)), data=None),
    "distill": kinds.DistillArgs("tiny-random-llama", DistillSettings(student_layers=1, steps=2), corpus="c.txt",
                                 measure_with=SweepSettings(repeats=2)),
    "speculate": kinds.SpeculateArgs("tiny-random-llama", "/students/a", draft_tokens=3),
    "serve-bench": kinds.ServeBenchArgs("tiny-random-llama", ("fp32",), ServeSettings(concurrency=(1, 4))),
    "serve-context": kinds.ServeContextArgs("tiny-random-llama", (16, 32)),
    "serve-memory": kinds.ServeMemoryArgs("tiny-random-llama", ("gguf-q8_0",), MemorySettings(contexts=(512,))),
    "cascade": kinds.CascadeArgs(classical.ClassicalSettings(second="fp32", shots=2)),
    "model-cascade": kinds.ModelCascadeArgs(model_cascade.ModelCascadeSettings(thresholds=(0.5, 0.7))),
    "prompt-lookup": kinds.PromptLookupArgs("tiny-random-llama", prompt_lookup.LookupSettings(draft_tokens=2)),
    "gguf-draft": kinds.GGUFDraftArgs("tiny-random-llama", gguf_draft.DraftSettings(draft_max_tokens=(2, 4))),
    "prepare": kinds.PrepareArgs("tiny-random-llama", gguf=False),
    "task": kinds.TaskArgs("tiny-random-llama", TaskSettings(("fp32", "gguf-q4_k_m"), "t.jsonl", new_tokens=8)),
}


def test_every_kind_comes_back_the_same_from_its_json_form():
    assert set(SAMPLES) == set(kinds.KINDS)  # a new kind gets a sample here, or this fails
    for name, args in SAMPLES.items():
        as_stored = json.loads(json.dumps(args.to_json()))  # what the queue and Ray carry
        again = kinds.parse(name, as_stored)
        assert again == args and type(again) is type(args), name
        kind = kinds.get(name)
        assert kind.similar(again) == kind.similar(args)


def test_bad_arguments_are_refused_by_name():
    raw = SAMPLES["sweep"].to_json()
    with pytest.raises(ValueError, match="unknown field.*colour"):
        kinds.parse("sweep", raw | {"colour": "red"})
    with pytest.raises(ValueError, match="sweep.settings: unknown field.*speed"):
        kinds.parse("sweep", raw | {"settings": raw["settings"] | {"speed": 1}})
    with pytest.raises(ValueError, match="techniques"):
        kinds.parse("sweep", {"model": "m"})
    with pytest.raises(ValueError, match="Unknown job kind 'paint'"):
        kinds.parse("paint", {})
    with pytest.raises(ValueError, match="new_tokens must be at least 2"):  # the settings' own checks still run
        kinds.parse("sweep", raw | {"settings": raw["settings"] | {"new_tokens": 1}})
    with pytest.raises(ValueError, match="between 1 and 1[0-9], got 0"):  # the args' own checks too
        kinds.parse("speculate", SAMPLES["speculate"].to_json() | {"prompts": 0})


# ---------------------------------------------------------------- a new kind: one module, registered


@dataclass(frozen=True)
class CountArgs(JobArgs):
    kind: ClassVar[str] = "count-test"
    to: int
    words: tuple[str, ...] = ()


def _count(args: CountArgs, ctx) -> dict:
    for i in range(args.to):
        ctx.report((i + 1) / args.to, f"counted {i + 1}")
    return {"counted": args.to, "words": list(args.words)}


@pytest.fixture
def count_kind(tmp_path):
    kind = register(JobKind(CountArgs, _count, similar=lambda a: f"count-test|{a.to}",
                            results=lambda: tmp_path / "counts.jsonl"))
    yield kind
    kinds.KINDS.pop(kind.name)


def test_a_new_kind_runs_inline_and_in_the_worker_from_its_typed_args(count_kind, tmp_path):
    seen = []
    done = launch(Job(CountArgs(3, ("a", "b"))), "inline", report=lambda f, m: seen.append(m))
    assert done.result == {"counted": 3, "words": ["a", "b"]} and seen[-1] == "counted 3"
    queue = JobQueue()
    job_id = launch(Job(CountArgs(2), "count to two"), "worker", queue=queue).job_id
    assert queue.job(job_id).args == {"to": 2, "words": []} and queue.job(job_id).similar == "count-test|2"
    assert worker.run_job(queue, queue.claim(os.getpid())) == "done"
    kept = [json.loads(line) for line in (tmp_path / "counts.jsonl").read_text().splitlines()]
    assert kept == [{"counted": 3, "words": ["a", "b"]}, {"counted": 2, "words": []}]  # inline and worker alike


def test_a_queued_job_whose_arguments_no_longer_fit_fails_in_words(count_kind):
    queue = JobQueue()
    job_id = queue.submit("count-test", {"to": 2, "colour": "red"}, "old", "k", PRESENTER, "s-p")
    assert worker.run_job(queue, queue.claim(os.getpid())) == "failed"
    assert "unknown field(s) colour" in queue.job(job_id).error


# ---------------------------------------------------------------- who may run what: every kind's files


@pytest.mark.parametrize("args", [
    kinds.CascadeArgs(classical.ClassicalSettings(train_file="/etc/hostname", test_file="/etc/hosts")),
    kinds.CascadeArgs(classical.ClassicalSettings(data_file="/etc/hosts")),
    kinds.ModelCascadeArgs(model_cascade.ModelCascadeSettings(data="/etc/hosts")),
    kinds.PromptLookupArgs("smollm2-135m-instruct", prompt_lookup.LookupSettings(prompt_files=("/etc/hosts",))),
    kinds.GGUFDraftArgs("smollm2-135m-instruct", gguf_draft.DraftSettings(draft="/srv/models/other.gguf")),
    kinds.DistillArgs("smollm2-135m-instruct", corpus="/etc/hosts"),
    kinds.LoraArgs("smollm2-135m-instruct", data="/etc/hosts"),
    kinds.MoeArgs("smollm2-135m-instruct", 16, (3,), shared=3, heal_minutes=5, heal_corpus="/etc/hosts"),
], ids=lambda a: a.kind)
def test_a_viewers_job_naming_a_server_file_is_refused(args):
    with pytest.raises(NotAllowed, match=VIEWER_FILES):
        check_allowed(args, presenter=False)
    queue = JobQueue()
    with pytest.raises(NotAllowed, match=VIEWER_FILES):
        submit(queue, Job(args), "viewer 1", "s-a")
    assert queue.snapshot().waiting == ()
    check_allowed(args, presenter=True)  # the presenter may


def test_a_viewers_job_on_bundled_files_is_allowed():
    bundled = tuple(str(p) for p in sorted((ASSETS / "prompts").glob("*.jsonl"))[:1]) or (str(ASSETS),)
    check_allowed(kinds.PromptLookupArgs("smollm2-135m-instruct", prompt_lookup.LookupSettings(prompt_files=bundled)),
                  presenter=False)
    check_allowed(SAMPLES["cascade"], presenter=False)


def test_a_viewers_job_may_read_the_public_text_the_pages_offer_and_no_file_beside_it(monkeypatch, tmp_path):
    from core import paths

    wiki, beside = tmp_path / "wikitext-2-raw-v1.test.txt", tmp_path / "secrets.txt"
    for f in (wiki, beside):
        f.write_text("text\n")
    monkeypatch.setattr(paths, "shared_wikitext", lambda: wiki)
    heal = lambda corpus: kinds.MoeArgs("smollm2-135m-instruct", 16, (3,), shared=3, heal_minutes=5,  # noqa: E731
                                        heal_corpus=str(corpus))
    check_allowed(heal(wiki), presenter=False)
    check_allowed(kinds.DistillArgs("smollm2-135m-instruct", corpus=str(wiki)), presenter=False)
    with pytest.raises(NotAllowed, match=VIEWER_FILES):
        check_allowed(heal(beside), presenter=False)


def test_the_worker_process_needs_neither_the_cli_nor_ray():
    code = ("import sys, core.launch.worker, core.launch.launch; "
            "print(sorted(m for m in sys.modules if m.startswith(('core.cli', 'ray'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
