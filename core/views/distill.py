"""The Distill page's view: the live loss curve, and the last run's teacher, pruned and distilled student in words.

Records and run facts in, figures and sentences out; no streamlit. Durations are written by the caller's `duration`
(the launch layer's fmt_seconds), so every page says them alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from core.store.records import VariantRecord
from core.techniques import distillation

Duration = Callable[[float], str]

# Training on the public WikiText-2 text beside the teacher's answers, offered by the Distill and MoE pages where
# ../shared/data holds it (core.paths.shared_wikitext): the text of the lab's best healed student and carve
PUBLIC_AND_ANSWERS = "public WikiText-2 text and the teacher's answers"

# The Distill page's "Which layers" radio: a label for every distillation.LAYER_CHOICES entry, and one sentence each.
LAYER_LABELS = {"spread": "evenly spread", "first": "the first ones", "every-other": "every other",
                "redundancy": "least redundant"}
LAYER_HELP = ("Evenly spread keeps the first and last layers, which matter most; DistilBERT kept every other; least "
              "redundant keeps the first, the last and the layers that change the hidden state most on a calibration "
              "text (the model runs over it once, then the scores are reused).")


def loss_figure(live: dict) -> go.Figure | None:
    """The training loss so far, with the held-out KL at each checkpoint; None before the first step."""
    log = distillation.TrainLog(**live)
    if not log.losses:
        return None
    fig = go.Figure(go.Scatter(y=log.losses, mode="lines", name="training loss (KL, nats/token)"))
    if log.heldout:
        fig.add_trace(go.Scatter(x=[s - 1 for s, _, _ in log.heldout], y=[k for _, k, _ in log.heldout],
                                 mode="markers+lines", name="held-out KL at checkpoints"))
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=30, b=10), title="Distillation loss (live)",
                      xaxis_title="step", yaxis_title="nats per token", legend=dict(orientation="h"))
    return fig


def progress_line(live: dict, duration: Duration) -> str | None:
    """Where training stands and when it ends; None before the first step or after the last."""
    log = distillation.TrainLog(**live)
    if not log.losses:
        return None
    per_step = sorted(log.step_seconds)[len(log.step_seconds) // 2]
    left = log.steps_total - len(log.losses)
    if left <= 0:
        return None
    return (f"Step {len(log.losses)} of {log.steps_total} · {per_step:.1f} s per step · training ends in about "
            f"{duration(left * per_step)}, then the three models are measured.")


@dataclass(frozen=True)
class DistilledRun:
    """The newest distilled student of a model, with the teacher and pruned student measured in the same run."""
    latest: VariantRecord
    teacher: VariantRecord | None
    trio: list[VariantRecord]  # teacher, pruned, distilled: those measured

    @property
    def facts(self) -> dict:
        return self.latest.variant_facts["distillation"]


def _role(record: VariantRecord) -> str | None:
    return record.variant_facts.get("distillation", {}).get("role")


def latest_run(records: Sequence[VariantRecord]) -> DistilledRun | None:
    """From one model's records, newest first; None before any distilled student was measured."""
    distilled = [r for r in records if r.family == "distillation" and _role(r) == "student_distilled"]
    if not distilled:
        return None
    latest = distilled[0]
    run_records = [r for r in records if r.run_id == latest.run_id]
    teacher = next((r for r in run_records if r.family == "reference"), None)
    pruned = next((r for r in run_records if _role(r) == "student_pruned"), None)
    return DistilledRun(latest, teacher, [r for r in (teacher, pruned, latest) if r is not None])


def run_caption(run: DistilledRun, duration: Duration) -> str:
    """How the student was made and measured, and what its quality numbers are against."""
    facts, settings = run.facts, run.latest.settings
    dashboard_note = (f" Measured from the dashboard's worker process, apart from the web server, with "
                      f"{settings.get('sessions_connected', '?')} browser sessions connected."
                      if settings.get("launched_from") == "dashboard" else "")
    return (f"Run {facts['student_path']}: {facts['student_layers']} of {facts['teacher_layers']} layers, "
            f"{facts['settings']['steps']} steps, {facts['tokens_seen']:,} tokens seen, "
            f"{duration(facts['train_seconds'])} of training on {facts['device']} ({facts['hardware']}), "
            f"{facts['threads']} threads; corpus: {facts['corpus']}. KL divergence and top-1 agreement are "
            "against the teacher on general prose the student never trained on; MC accuracy has a 95% "
            "bootstrap interval." + dashboard_note)


def speculative_caption(result: dict) -> str:
    """How a speculative-decoding comparison was run (core/experiments/speculative.py's saved result)."""
    return (f"{result['draft_tokens']} drafted tokens per pass, up to {result['max_new_tokens']} new tokens, greedy; "
            f"draft {result['draft']}; {result['device']} ({result['hardware']}), {result['threads']} threads; "
            f"{result['created_at']}. Speed-up = the teacher's time alone / its time with the draft, summed over "
            "the prompts, after one warm-up of each.")


# --- the numbers shown as metrics: st.metric's keyword arguments (label, value, delta, delta_color, help) -----------


def plan_metrics(shape, layers: int, teacher_layers: int) -> list[dict]:
    """The planned student before anything is loaded (distillation.plan's StudentShape)."""
    return [
        dict(label="Student parameters", value=f"{shape.student_params / 1e6:.1f} M",
             delta=f"{shape.params_pct - 100:.0f}% vs teacher", delta_color="off"),
        dict(label="Size in float32", value=f"{shape.student_mb_fp32:.0f} MB",
             delta=f"teacher {shape.teacher_mb_fp32:.0f} MB", delta_color="off"),
        dict(label="Expected decode speed-up", value=f"{shape.expected_speedup:.2f}x",
             help="Bytes read per decoded token, teacher over student: single-stream decoding is limited by memory "
                  "bandwidth, so this is the ceiling. The embedding table stays whole, so halving the layers gives "
                  "less than 2x. Measured after training."),
        dict(label="Layers kept", value=f"{layers} of {teacher_layers}"),
    ]


def run_metrics(run: DistilledRun, duration: Duration) -> list[dict]:
    """What training repaired, and what it cost."""
    facts = run.facts
    return [
        dict(label="Held-out KL divergence, pruned → distilled",
             value=f"{facts['heldout_kld_pruned']:.2f} → {facts['heldout_kld_distilled']:.2f} nats",
             help="Against the teacher, on the held-out tenth of the training text (never trained on)."),
        dict(label="Training cost", value=f"US$ {facts['usd_cost']:.4f}",
             help=f"{duration(facts['train_seconds'])} at US$ {facts['usd_per_hour']}/hour (the sidebar's price when "
                  "the run started)."),
    ]


def speculative_metrics(result: dict) -> list[dict]:
    """A speculative-decoding comparison's outcome (core/experiments/speculative.py's saved result)."""
    spread = result["speedup_per_prompt"]
    return [
        dict(label="Output identical to the teacher's", value="yes" if result["identical_output"] else "NO",
             help="Token by token, on every prompt."),
        dict(label="Drafted tokens accepted", value=f"{result['acceptance_rate']:.0%}"),
        dict(label="Tokens per teacher pass", value=f"{result['tokens_per_pass']:.2f}",
             help="1.00 means no gain is possible."),
        dict(label="Speed-up", value=f"{result['speedup']:.2f}x",
             help=f"Per prompt: median {spread['median']:.2f}x, p10–p90 {spread['p10']:.2f}–{spread['p90']:.2f}x"),
    ]
