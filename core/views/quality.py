"""Quality in plain words: a scale from "indistinguishable" to "a different model", and the floor under which the lab
never recommends a variant without a warning.

The scale reads top-1 agreement with the full-precision reference: the share of next tokens on which a variant picks
the reference's most likely token. It is the lab's most sensitive measure (task accuracy near chance hides damage), and
it has a direct reading: at 75% the variant writes a different next token about 1 time in 4.

Where the band edges come from: SmolLM2-135M-Instruct measured by this lab's sweep (`python -m core sweep`, 3,384
tokens of the bundled prose, 194 multiple-choice questions) on an AMD EPYC with AVX-512, 2 cores, 2026-12-05:

    variant      top-1   KLD nats   MC answers changed   MC accuracy change
    GGUF Q8_0    95.7%   0.004       0.5%                 +0.5 points
    GGUF Q4_K_M  86.6%   0.052       3.6%                 -1.5 points
    NF4          71.5%   0.235      13.4%                 -6.2 points
    GGUF Q2_K    64.1%   0.389      (not scored then)

Above about 93% a variant changes almost no answers; between 85% and 93% it changes a few percent of them, within the
multiple-choice interval; under 85% it changes one answer in eight or more and loses accuracy beyond the interval.
Hence the default floor at 85%. `calibration_rows` recomputes the same table from the store, so a page can show the
evidence for the bands on the user's own model and machine next to them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from core.store.records import VariantRecord

Tone = Literal["good", "fair", "poor"]  # good: green; fair: no colour; poor: amber, a warning


@dataclass(frozen=True)
class QualityBand:
    name: str
    min_top1_agreement: float  # the band holds top-1 agreement >= this (and < the band above)
    meaning: str  # what it means for a user, in words
    tone: Tone


BANDS: tuple[QualityBand, ...] = (  # best first
    QualityBand("indistinguishable", 0.98, "reads like the full model", "good"),
    QualityBand("very close", 0.93, "almost never changes an answer", "good"),
    QualityBand("close", 0.85, "changes a few answers in a hundred", "fair"),
    QualityBand("noticeably different", 0.75, "changes about one answer in ten", "poor"),
    QualityBand("often different", 0.60, "changes many answers and loses accuracy", "poor"),
    QualityBand("a different model", 0.0, "agrees with the full model less than 3 times in 5", "poor"),
)
DEFAULT_FLOOR_TOP1 = 0.85  # the lower edge of "close": see the table in this module's docstring


def band_of(top1_agreement: float) -> QualityBand | None:
    """The band a top-1 agreement falls in; None where it was not measured."""
    if not (isinstance(top1_agreement, (int, float)) and math.isfinite(top1_agreement)):
        return None
    return next(b for b in BANDS if top1_agreement >= b.min_top1_agreement)


def one_in(top1_agreement: float) -> str:
    """'differs from the full model on about 1 next token in 3', or that it never did on the text measured."""
    if not (isinstance(top1_agreement, (int, float)) and math.isfinite(top1_agreement)):
        return "was not compared with the full model"
    miss = 1.0 - top1_agreement
    if miss <= 0:
        return "picked the full model's next token every time on the text measured"
    return f"differs from the full model on about 1 next token in {max(2, round(1 / miss)):,}"


def scale_words(top1_agreement: float) -> str:
    """The band's name and its reading, for beside a number: 'close: differs ... 1 next token in 7'."""
    band = band_of(top1_agreement)
    if band is None:
        return "quality not measured"
    return f"{band.name}: {one_in(top1_agreement)}"


def below_floor(record: VariantRecord, floor_top1: float) -> bool:
    """True when the variant's top-1 agreement is under the floor, or unknown (an unmeasured variant is no better)."""
    value = record.top1_agreement
    return not (isinstance(value, (int, float)) and math.isfinite(value) and value >= floor_top1)


def answer_flips(record: VariantRecord, reference: VariantRecord | None) -> float | None:
    """Share of multiple-choice questions on which the variant's pick differs from the reference's; None if unknown."""
    if reference is None or not record.mc_per_item or not reference.mc_per_item:
        return None
    picks = {item.get("index"): item.get("pick") for item in reference.mc_per_item}
    shared = [(item.get("pick"), picks[item.get("index")]) for item in record.mc_per_item if item.get("index") in picks]
    if not shared:
        return None
    return sum(1 for mine, theirs in shared if mine != theirs) / len(shared)


def floor_warning(record: VariantRecord, reference: VariantRecord | None, floor_top1: float) -> str | None:
    """The amber words for a variant under the floor; None when it is at or above it."""
    if not below_floor(record, floor_top1):
        return None
    if not math.isfinite(record.top1_agreement):
        return (f"{record.label} has no quality measurement against the full model, so nothing says it is good enough. "
                "Measure it in a sweep with the reference before deploying it.")
    band = band_of(record.top1_agreement)
    flips = answer_flips(record, reference)
    flipped = f" and changed {flips:.0%} of multiple-choice answers" if flips is not None else ""
    return (f"{record.label} is below the quality floor ({floor_top1:.0%} top-1 agreement): it "
            f"{one_in(record.top1_agreement)}{flipped}, which is \"{band.name}\" ({band.meaning}). "
            "Compare its answers in the Arena before deploying it, or lower the floor if that is acceptable.")


def calibration_rows(records: Sequence[VariantRecord], reference: VariantRecord | None) -> list[dict]:
    """The evidence for the bands on this store: top-1 next to MC answers changed and the MC accuracy change."""
    rows = []
    for r in sorted(records, key=lambda r: -r.top1_agreement if math.isfinite(r.top1_agreement) else math.inf):
        band = band_of(r.top1_agreement)
        flips = answer_flips(r, reference)
        change = (r.mc_accuracy - reference.mc_accuracy) * 100 if reference is not None else math.nan
        rows.append({"variant": r.label, "top-1 agreement": r.top1_agreement, "band": band.name if band else None,
                     "KLD nats": r.kld_mean, "MC answers changed": flips,
                     "MC accuracy change, points": change if math.isfinite(change) else None})
    return rows
