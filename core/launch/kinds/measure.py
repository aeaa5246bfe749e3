"""Job kinds that measure variants into the results store: a sweep, a mixture-of-experts sweep, a budget search."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from core import models, techniques
from core.experiments import budget_search, moe_sweep, sweep
from core.experiments.sweep import SweepSettings
from core.launch import cluster
from core.launch.job import JobArgs, JobContext
from core.launch.kinds.base import JobKind, refusing, register
from core.techniques import moe
from core.techniques.gguf import budget as gguf_budget


def _progress(ctx: JobContext):
    return lambda p: ctx.report(p.fraction, p.message)


def _timing_key(s: SweepSettings) -> str:
    return f"new_tokens={s.new_tokens},repeats={s.repeats},mc_max_items={s.mc_max_items}"


def _sweep_files(s: SweepSettings) -> list[str]:
    return [s.eval_set, s.ppl_text]


def _known_techniques(keys) -> None:
    for key in keys:
        techniques.get(key)  # a ValueError naming the known keys


@dataclass(frozen=True)
class SweepArgs(JobArgs):
    kind: ClassVar[str] = "sweep"
    model: str  # a bundled key, a folder or a hub id; on Ray, several comma-separated
    techniques: tuple[str, ...]
    settings: SweepSettings = field(default_factory=SweepSettings)
    devices: tuple[str, ...] = ()  # on Ray: each variant on each device; () = the settings' device

    def model_names(self) -> list[str]:
        return [m.strip() for m in self.model.split(",") if m.strip()]


def run_sweep(args: SweepArgs, ctx: JobContext):
    return sweep.run_sweep(args.model, list(args.techniques), args.settings, store=ctx.store,
                           should_stop=ctx.should_stop, progress=_progress(ctx))


def sweep_on_ray(args: SweepArgs, store, address, progress, should_stop):
    """One Ray task per variant (model x technique x device) instead of one task for the whole sweep."""
    return cluster.fan_out_sweep(args.model_names(), list(args.techniques), args.settings, store, address,
                                 list(args.devices) or None, progress, should_stop)


SWEEP = register(JobKind(
    SweepArgs, run_sweep,
    similar=lambda a: f"sweep|{a.model}|{','.join(sorted(a.techniques))}|{_timing_key(a.settings)}",
    models=lambda a: a.model_names(), files=lambda a: _sweep_files(a.settings), on_ray=sweep_on_ray,
    size=lambda a: float(len(a.techniques)),
    refuse=refusing(lambda a: _known_techniques(a.techniques))))


@dataclass(frozen=True)
class MoeArgs(JobArgs):
    kind: ClassVar[str] = "moe"
    model: str
    experts: int
    top_ks: tuple[int, ...]
    dense_layers: int = moe_sweep.DEFAULT_DENSE_LAYERS
    settings: SweepSettings = field(default_factory=SweepSettings)
    shared: int = 0  # experts always on (CMoE's shared experts); top_ks count the routed ones
    heal_minutes: float = 0.0  # > 0: train the one carve's experts by distillation for this long, then measure it too
    heal_scope: str = "experts"  # or "all": attention and norms train beside the experts (moe.healed.HEAL_SCOPES)
    heal_corpus: str | None = None  # a text file to heal on beside the teacher's answers

    def __post_init__(self) -> None:
        if self.heal_minutes and len(self.top_ks) != 1:
            raise ValueError(f"Heal one setting at a time: pick a single number of experts per token, not "
                             f"{len(self.top_ks)}.")
        if self.heal_minutes and self.heal_minutes < 1:
            raise ValueError(f"A healing budget of {self.heal_minutes:g} min trains only a handful of steps; give at "
                             "least 1 minute (or 0 for no training).")
        moe.healed.check_scope(self.heal_scope)
        if self.heal_corpus is not None and not self.heal_minutes:
            raise ValueError("A healing text only counts with a healing budget: give heal minutes too.")
        if self.heal_corpus is not None and not Path(self.heal_corpus).is_file():
            raise ValueError(f"The healing text {self.heal_corpus} is not a file: give a UTF-8 text or JSONL file.")


def run_moe(args: MoeArgs, ctx: JobContext):
    if args.heal_minutes:
        config = moe.MoEConfig(experts=args.experts, top_k=args.top_ks[0], dense_layers=args.dense_layers,
                               shared=args.shared)
        return moe_sweep.heal_and_measure(args.model, config, args.heal_minutes, args.settings, store=ctx.store,
                                          should_stop=ctx.should_stop, progress=_progress(ctx), scope=args.heal_scope,
                                          corpus_path=Path(args.heal_corpus) if args.heal_corpus else None)
    return moe_sweep.run_moe_sweep(args.model, args.experts, list(args.top_ks), args.settings, store=ctx.store,
                                   should_stop=ctx.should_stop, dense_layers=args.dense_layers,
                                   progress=_progress(ctx), shared=args.shared)


MOE = register(JobKind(
    MoeArgs, run_moe,
    similar=lambda a: (f"moe|{a.model}|{a.experts}s{a.shared}|{sorted(a.top_ks)}|heal{a.heal_minutes:g}{a.heal_scope}"
                       f"{'+text' if a.heal_corpus else ''}|{_timing_key(a.settings)}|{_carve(a)}"),
    budget_s=lambda a: 60 * a.heal_minutes,
    models=lambda a: [a.model], files=lambda a: [*_sweep_files(a.settings), *filter(None, [a.heal_corpus])],
    size=lambda a: float(len(a.top_ks) + 1)))


@dataclass(frozen=True)
class BudgetArgs(JobArgs):
    """Fit my budget: one searched GGUF file per budget, measured beside llama.cpp's presets."""
    kind: ClassVar[str] = "budget"
    model: str
    budgets_bytes: tuple[int, ...]
    imatrix: bool = False


def run_budget(args: BudgetArgs, ctx: JobContext):
    return budget_search.run(list(args.budgets_bytes), None, args.imatrix, args.model, report=ctx.report,
                             should_stop=ctx.should_stop)


def _carve(a: MoeArgs) -> str:
    """Whether the experts must be carved first (k-means and a router fitted on the calibration text, cached per
    model and expert count) or are cached: a first MoE job took 88 s here, the next one alike 30 s."""
    try:
        key = models.resolve(a.model).key
    except models.ModelError:
        return "unknown model"
    shared = f"s{a.shared}" if a.shared else ""
    cached = any(moe.cache_root().glob(f"{key}-E{a.experts}{shared}-*"))
    return "experts cached" if cached else "experts to carve"


def _sensitivity_table(a: BudgetArgs) -> str:
    """Whether the job must build the model's sensitivity table first (a few minutes here, once per model) or finds
    it cached: a first budget job took 242 s, the next one at the same size 60 s."""
    try:
        spec = models.resolve(a.model)
    except models.ModelError:
        return "unknown model"
    if not models.checkpoint_ready(spec.key):
        return "table to build"
    cached = gguf_budget.cached_table(models.checkpoint_dir(spec.key), a.imatrix) is not None
    return "table cached" if cached else "table to build"


BUDGET = register(JobKind(
    BudgetArgs, run_budget,
    similar=lambda a: f"budget|{a.model}|{sorted(a.budgets_bytes)}|{a.imatrix}|{_sensitivity_table(a)}",
    models=lambda a: [a.model], size=lambda a: float(len(a.budgets_bytes)),
    refuse=refusing(lambda a: budget_search.check_request(a.model, list(a.budgets_bytes), a.imatrix))))
