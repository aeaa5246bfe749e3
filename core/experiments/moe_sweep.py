"""Convert a dense model to a mixture of experts once, then measure the dense reference and each top-k with the
sweep harness (core.experiments.sweep), so every number comes from the same place as every other variant's."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from core import models, techniques
from core.experiments import sweep
from core.store.records import VariantRecord
from core.techniques import distill_corpus, distillation
from core.techniques.moe import DEFAULT_DENSE_LAYERS, MoEConfig, healed, load_moe, prepare_conversion, technique_key

CONVERSION_SHARE = 0.15  # of a run's progress bar: converting takes about a minute, measuring several


def run_moe_sweep(model_name: str, experts: int, top_ks: list[int], settings, store=None, progress=None,
                  should_stop: Callable[[], bool] | None = None,
                  dense_layers: int = DEFAULT_DENSE_LAYERS, shared: int = 0) -> list[VariantRecord]:
    """Fit (or load) the conversion for E experts (`shared` of them always on), then measure the dense reference and each k with
    core.experiments.sweep.run_sweep, so every number comes from the same harness. Returns the VariantRecords."""
    if not top_ks:
        raise ValueError("Pick at least one number of experts per token (top_k) to measure.")
    if len(set(top_ks)) != len(top_ks):
        raise ValueError(f"A top_k is listed twice in {list(top_ks)}")
    configs = [MoEConfig(experts=experts, top_k=k, dense_layers=dense_layers, shared=shared)
               for k in top_ks]  # validates every k first
    report = progress or (lambda _p: None)

    def converting(fraction: float, message: str) -> None:
        report(sweep.Progress(CONVERSION_SHARE * fraction, "convert", "prepare", message))

    checkpoint = models.prepare(models.resolve(model_name), progress=lambda msg: converting(0.0, msg))
    prepare_conversion(checkpoint, configs[0], converting, should_stop)
    keys = [techniques.REFERENCE] + [technique_key(c.experts, c.top_k, c.dense_layers, c.shared) for c in configs]
    return sweep.run_sweep(model_name, keys, settings, store=store, progress=report, should_stop=should_stop,
                           span=(CONVERSION_SHARE, 1 - CONVERSION_SHARE))


# ---------------------------------------------------------------- healing one carve with the dense model as teacher

HEAL_SHARE = 0.7  # of a healing run's progress bar: the budget; measuring the three variants takes the rest
# peak learning rate by what trains: the experts alone start close to right, a gentler peak than a pruned student's;
# with attention and norms too the whole stack moves, as a pruned student's does
HEAL_LEARNING_RATE = {"experts": 1e-4, "all": 3e-4}


def heal_and_measure(model_name: str, config: MoEConfig, budget_minutes: float, settings, store=None, progress=None,
                     should_stop: Callable[[], bool] | None = None, answer_tokens: int | None = None,
                     scope: str = "experts", corpus_path: Path | None = None) -> list[VariantRecord]:
    """Carve (or load) `config`, train it by distillation from the dense model for `budget_minutes` (`scope`: the
    experts alone, or every weight but the router and embeddings) on the teacher's answers (cached; `answer_tokens`
    long, the distillation default when None) and, when given, the text at `corpus_path`; save the trained tensors
    as `moe-...-healed-<run>`, then measure dense, carve and healed alike."""
    healed.check_scope(scope)  # before anything loads
    heal = distillation.DistillSettings(budget_minutes=budget_minutes, learning_rate=HEAL_LEARNING_RATE[scope],
                                        **({"corpus_answer_tokens": answer_tokens} if answer_tokens else {}))
    report = progress or (lambda _p: None)
    stop = should_stop or (lambda: False)
    spec = models.resolve(model_name)
    checkpoint = models.prepare(spec)
    say = lambda f, m: report(sweep.Progress(HEAL_SHARE * f, "heal", "prepare", m))  # noqa: E731
    prepare_conversion(checkpoint, config, say, should_stop)
    tokenizer, teacher = models.load_tokenizer(checkpoint), models.load_model(checkpoint)
    rows = distill_corpus.teacher_answers(teacher, tokenizer, spec.key, heal.corpus_answer_tokens, "cpu",
                                        lambda f, m: say(0.1 * f, m), stop)
    corpus = distill_corpus.corpus_from_answers(rows, tokenizer, heal.heldout_share)
    if corpus_path is not None:  # the held-out parts merge too, so the heal curve is read on both kinds of text
        corpus = distill_corpus.merged([distill_corpus.corpus_from_file(Path(corpus_path), tokenizer,
                                                                        heal.heldout_share), corpus])
    student = load_moe(checkpoint, config)
    base = technique_key(config.experts, config.top_k, config.dense_layers, config.shared)
    run, log = healed.new_run_id(), distillation.TrainLog()
    facts = {"run": run, "base_key": base, "base_label": techniques.get(base).label, "model": spec.key,
             "checkpoint_name": checkpoint.name, "budget_minutes": budget_minutes, "corpus": corpus.source,
             "learning_rate": heal.learning_rate, "scope": scope}

    def save(step: int, _final: bool) -> None:
        curve = [{"step": s, "train_minutes": t / 60, "heldout_kld_nats": k, "heldout_top1": a}
                 for (s, k, a), t in zip(log.heldout, log.heldout_seconds)]
        healed.save_healed(student, run, facts | {"steps": step, "train_seconds": log.heldout_seconds[-1],
                                                  "heal_curve": curve})

    distillation.train_student(student, teacher, corpus, heal, "cpu", lambda f, m: say(0.1 + 0.9 * f, m), stop, log,
                               save, params=healed.heal_parameters(student, scope))
    del student, teacher
    keys = [techniques.REFERENCE, base, healed.healed_key(base, run)]
    return sweep.run_sweep(model_name, keys, settings, store=store, progress=report, should_stop=should_stop,
                           span=(HEAL_SHARE, 1 - HEAL_SHARE))
