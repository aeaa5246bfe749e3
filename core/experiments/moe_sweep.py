"""Convert a dense model to a mixture of experts once, then measure the dense reference and each top-k with the
sweep harness (core.experiments.sweep), so every number comes from the same place as every other variant's."""

from __future__ import annotations

from typing import Callable

from core import models, techniques
from core.experiments import sweep
from core.store.records import VariantRecord
from core.techniques.moe import DEFAULT_DENSE_LAYERS, MoEConfig, prepare_conversion, technique_key

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
