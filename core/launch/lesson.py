"""The lesson path: one quick job per lever, in the order a 50-minute class takes them (quantize -> distill -> LoRA ->
MoE -> a hybrid -> Decide), each small enough to finish live on a 2-core laptop and saying what that costs.

Every quick setting is a typed job (core/launch/kinds), queued like any other; what it gives up is worded from the
same numbers it runs with, against the kind's own defaults (a full run). Which steps are done is read from what
they leave behind: records in the store, or the speculative-decoding results file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from core.experiments.sweep import SweepSettings
from core.launch.job import JobArgs
from core.launch.kinds import DistillArgs, LoraArgs, MoeArgs, SpeculateArgs, SweepArgs
from core.models.saved import SavedStudent
from core.paths import ASSETS
from core.store.records import VariantRecord
from core.techniques import distill_corpus, distillation, lora

STEPS = ("quantize", "distill", "lora", "moe", "hybrid", "decide")
QUANTIZED = ("fp32", "nf4")  # the reference and one 4-bit variant: the smallest pair that shows the trade
MOE_EXPERTS = 8
MOE_TOP_KS = (2, MOE_EXPERTS)  # a quarter of the experts, and all of them (the dense arithmetic, as a check)

# Measuring a variant for the map: fewer timed runs, questions and perplexity tokens than a full sweep. The
# intervals come out wider and the page shows them as such; the speeds are medians all the same.
QUICK_MEASURE = SweepSettings(new_tokens=16, repeats=2, mc_max_items=20, ppl_max_tokens=1024,
                              launched_from="dashboard")
QUICK_DISTILL = distillation.DistillSettings(steps=10, batch_size=2, seq_len_tokens=128, warmup_steps=2, checkpoints=1)
# The student trains on a short bundled text rather than on the teacher's answers to every bundled prompt: writing
# those answers (24 per ~30 s here at 32 tokens each, with other work on the cores: ~7 min for all) is more than
# the whole step may take. This is the MoE and imatrix calibration prose, kept apart from the text and questions every variant is scored on.
QUICK_CORPUS = ASSETS / "eval" / "moe_calibration.txt"
QUICK_LORA = lora.FinetuneSettings(steps=12, batch_size=4, eval_items=20)
QUICK_DRAFT_TOKENS = 4
QUICK_SPECULATE_NEW_TOKENS = 32
# Five prompts, not the ten of a full run: the step took 107 s of a lesson with ten (most of it timing each
# prompt twice); the speed-up is the ratio of summed times all the same, with a wider spread.
QUICK_SPECULATE_PROMPTS = 5


@dataclass(frozen=True)
class LessonStep:
    key: str  # one of STEPS
    title: str
    teaches: str  # what the class sees, in one sentence
    quick: str  # the quick setting, in plain words
    gives_up: str  # what the quick setting gives up against a full run
    page: str  # the page where the result shows (a path st.page_link takes)
    page_label: str
    label: str = ""  # the job's label in the queue
    args: JobArgs | None = None  # None: nothing to run (Decide), or not yet (see `waits_for`)
    waits_for: str = ""  # why there is no job to run yet


def _measure(hardware_preset: str, usd_per_hour: float) -> SweepSettings:
    return replace(QUICK_MEASURE, hardware_preset=hardware_preset, usd_per_hour=usd_per_hour)


def _measure_words(s: SweepSettings) -> str:
    full = SweepSettings()
    return (f"{s.repeats} timed runs of {s.new_tokens} tokens (a full run: {full.repeats} of {full.new_tokens}), "
            f"{s.mc_max_items} multiple-choice questions (a full run: all) and {s.ppl_max_tokens:,} tokens of "
            f"perplexity text (a full run: {full.ppl_max_tokens:,}): wider intervals, the same medians")


def quantize_step(model: str, hardware_preset: str, usd_per_hour: float) -> LessonStep:
    s = _measure(hardware_preset, usd_per_hour)
    return LessonStep(
        "quantize", "Quantize", "Store each weight in 4 bits instead of 32: the model gets smaller, and its answers "
        "move a little from the full-precision reference.",
        f"{' and '.join(QUANTIZED)} only.", _measure_words(s) + ".", "pages/tradeoff_map.py", "See them on the Trade-off Map",
        f"Lesson: quantize ({', '.join(QUANTIZED)})", SweepArgs(model, QUANTIZED, s))


def distill_step(model: str, hardware_preset: str, usd_per_hour: float) -> LessonStep:
    s, full = QUICK_DISTILL, distillation.DistillSettings()
    return LessonStep(
        "distill", "Distill", "Cut a smaller student from the model's own layers, see how badly that breaks it, "
        "and watch a short training repair part of the damage.",
        f"a {s.student_layers}-layer student, {s.steps} training steps of {s.batch_size} x {s.seq_len_tokens} tokens "
        "on a short bundled text (the calibration prose).",
        f"{s.steps} steps on a few pages of text (a full run: {full.steps} steps of {full.batch_size} x "
        f"{full.seq_len_tokens} tokens on the teacher's own answers to {len(distill_corpus.load_prompts())} prompts, "
        "which it writes first, once, in several minutes here): the student starts to copy the teacher's style, "
        "not yet its knowledge. The three models are measured as quickly as in step 1.",
        "pages/distill.py", "See the three models on Distill",
        f"Lesson: distill a {s.student_layers}-layer student",
        DistillArgs(model, s, str(QUICK_CORPUS), usd_per_hour, hardware_preset,
                    measure_with=_measure(hardware_preset, usd_per_hour)))


def lora_step(model: str, hardware_preset: str, usd_per_hour: float) -> LessonStep:
    s, full = QUICK_LORA, lora.FinetuneSettings()
    return LessonStep(
        "lora", "Fine-tune with LoRA", "Train thin adapters beside the frozen weights on a narrow task (routing "
        "customer messages): a few percent of the parameters, a task that gets much better.",
        f"LoRA rank {s.rank}, {s.steps} steps of {s.batch_size} examples, scored on {s.eval_items} held-out messages.",
        f"{s.steps} steps (a full run: {full.steps} of {full.batch_size}), and accuracy on {s.eval_items} messages "
        "instead of the whole held-out set: the interval is wide, the jump from before to after shows all the same. The merged model is measured as quickly as in step 1.",
        "pages/lora.py", "See the run on Fine-tune", "Lesson: LoRA on support-routing",
        LoraArgs(model, s, usd_per_hour=usd_per_hour, hardware_preset=hardware_preset,
                 measure_with=_measure(hardware_preset, usd_per_hour)))


def moe_step(model: str, hardware_preset: str, usd_per_hour: float) -> LessonStep:
    s = _measure(hardware_preset, usd_per_hour)
    ks = " and ".join(map(str, MOE_TOP_KS))
    return LessonStep(
        "moe", "Mixture of experts", "Split each feed-forward layer into experts and run only a few per token: "
        "less arithmetic per token, at a price in quality for a model never trained in pieces.",
        f"{MOE_EXPERTS} experts per layer, {ks} of them per token.", _measure_words(s) + ".",
        "pages/moe.py", "See the curve on Mixture of experts", f"Lesson: mixture of experts ({MOE_EXPERTS} experts)",
        MoeArgs(model, MOE_EXPERTS, MOE_TOP_KS, settings=s))


def hybrid_step(model: str, students: Sequence[SavedStudent]) -> LessonStep:
    """The student distilled in step 2 drafts for its teacher: two levers in one, on the same text."""
    words = dict(
        key="hybrid", title="A hybrid: the student drafts for its teacher",
        teaches="Speculative decoding: the distilled student guesses a few tokens and the teacher checks them in one "
                "pass. The text stays exactly the teacher's; only the speed can change.",
        quick=f"{QUICK_DRAFT_TOKENS} drafted tokens per pass, {QUICK_SPECULATE_NEW_TOKENS} new tokens on each of "
              f"{QUICK_SPECULATE_PROMPTS} bundled prompts.",
        gives_up="Short answers, and a student trained only briefly: fewer drafts are kept than a fully trained "
                 "student's would be. On a CPU the teacher's check costs nearly as much as writing, so expect "
                 "little or no gain here.",
        page="pages/hybrids.py", page_label="See it on Hybrids (decoding tricks)",
        label="Lesson: the student drafts for its teacher")
    if not students:
        return LessonStep(**words, waits_for="Distill a student first (step 2): it is the draft.")
    return LessonStep(**words, args=SpeculateArgs(model, str(students[0].path), QUICK_DRAFT_TOKENS,
                                                  QUICK_SPECULATE_NEW_TOKENS, QUICK_SPECULATE_PROMPTS))


def decide_step() -> LessonStep:
    return LessonStep(
        "decide", "Decide", "State a budget and a quality floor, and get the measured variant that meets it, with "
        "the monthly bill and the devices it fits.", "nothing to run: it reads every result above.",
        "nothing: it uses what the steps above measured.", "pages/decide.py", "Go to Decide",
        waits_for="Quantize first (step 1): Decide needs the reference and a variant to choose from.")


def lesson_steps(model: str, hardware_preset: str, usd_per_hour: float,
                 students: Sequence[SavedStudent]) -> list[LessonStep]:
    """The path in class order; `students` are the model's saved students, newest first (the hybrid's draft)."""
    return [quantize_step(model, hardware_preset, usd_per_hour), distill_step(model, hardware_preset, usd_per_hour),
            lora_step(model, hardware_preset, usd_per_hour), moe_step(model, hardware_preset, usd_per_hour),
            hybrid_step(model, students), decide_step()]


def done_steps(records: Sequence[VariantRecord], speculative_rows: Sequence[dict], model_key: str,
               hardware: str) -> set[str]:
    """Which steps have a result on this machine: `records` of the model, `speculative_rows` as saved."""
    here = [r for r in records if r.hardware == hardware]
    techniques = {r.technique for r in here}
    done = set()
    if set(QUANTIZED) <= techniques:
        done |= {"quantize", "decide"}  # Decide has nothing to run: it is ready once it has the pair to choose from
    if any(r.family == "distillation" and r.variant_facts.get("distillation", {}).get("role") == "student_distilled"
           for r in here):
        done.add("distill")
    if any(r.family == "lora" and "finetune" in r.variant_facts for r in here):
        done.add("lora")
    if any(r.family == "moe" and r.variant_facts.get("experts") == MOE_EXPERTS for r in here):
        done.add("moe")
    if any(row.get("model") == model_key and row.get("hardware") == hardware for row in speculative_rows):
        done.add("hybrid")
    return done


def students_of(students: Sequence[SavedStudent], model_key: str) -> list[SavedStudent]:
    """The model's saved students, newest first (saved_students' order)."""
    return [s for s in students if s.facts.get("teacher") == model_key and Path(s.path).is_dir()]
