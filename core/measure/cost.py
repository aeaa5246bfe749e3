"""Hardware presets and the arithmetic that turns a measured speed into money.

Prices are public on-demand list prices (or, for a laptop, an amortised purchase), each with its
source and the month it is from, because cloud prices change and a number without a date misleads.
Every function here takes plain numbers and returns plain numbers; formatting belongs to the page. Monthly bills
(machines, busy hours, always on or busy only) are core/measure/bill.py's, the one cost model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, get_args

DeviceKind = Literal["cpu", "gpu"]
DEVICE_KINDS: tuple[str, ...] = get_args(DeviceKind)

SECONDS_PER_HOUR = 3600.0
TOKENS_PER_MILLION = 1_000_000.0
DAYS_PER_MONTH = 30  # a billing month, kept round so that monthly figures are easy to check by hand


@dataclass(frozen=True)
class HardwarePreset:
    key: str
    label: str
    kind: DeviceKind
    usd_per_hour: float
    memory_gb: float  # memory the model must fit in: GPU memory for a GPU, RAM for a CPU
    bandwidth_gb_s: float  # peak memory bandwidth; single-stream decode is bound by it
    source: str  # what exactly the price and the specs are, and where they come from
    as_of: str  # "YYYY-MM": the month the price is from

    def __post_init__(self) -> None:
        if self.kind not in DEVICE_KINDS:
            raise ValueError(f"kind must be one of {DEVICE_KINDS}, got {self.kind!r}")
        _check_price(self.usd_per_hour)
        if not self.memory_gb > 0:
            raise ValueError(f"memory_gb must be > 0, got {self.memory_gb!r}")
        if not self.bandwidth_gb_s > 0:
            raise ValueError(f"bandwidth_gb_s must be > 0, got {self.bandwidth_gb_s!r}")


def _check_price(usd_per_hour: float) -> None:
    # NaN fails every comparison, so `not >= 0` also rejects it.
    if not (usd_per_hour >= 0 and math.isfinite(usd_per_hour)):
        raise ValueError(f"usd_per_hour must be a finite number >= 0, got {usd_per_hour!r}")


def _check_speed(tokens_per_s: float) -> None:
    if not (tokens_per_s > 0 and math.isfinite(tokens_per_s)):
        raise ValueError(f"tokens_per_s must be a finite number > 0, got {tokens_per_s!r}")


# --- the laptop: a purchase spread over its working life, plus the electricity it draws ---------
LAPTOP_PRICE_USD = 1500.0
LAPTOP_LIFETIME_YEARS = 3
LAPTOP_HOURS_PER_DAY = 8
LAPTOP_POWER_W = 45.0  # a laptop under sustained CPU load
ELECTRICITY_USD_PER_KWH = 0.17  # about the US residential average


def laptop_usd_per_hour(
    price_usd: float = LAPTOP_PRICE_USD,
    lifetime_years: float = LAPTOP_LIFETIME_YEARS,
    hours_per_day: float = LAPTOP_HOURS_PER_DAY,
    power_w: float = LAPTOP_POWER_W,
    electricity_usd_per_kwh: float = ELECTRICITY_USD_PER_KWH,
) -> float:
    """Amortised hourly cost of a laptop: purchase over the hours it is used, plus power."""
    hours_used = lifetime_years * 365 * hours_per_day
    return price_usd / hours_used + power_w / 1000 * electricity_usd_per_kwh


def _laptop_source() -> str:
    hours_used = LAPTOP_LIFETIME_YEARS * 365 * LAPTOP_HOURS_PER_DAY
    purchase = LAPTOP_PRICE_USD / hours_used
    power = LAPTOP_POWER_W / 1000 * ELECTRICITY_USD_PER_KWH
    return (
        f"Amortised, not a rental price: ${LAPTOP_PRICE_USD:,.0f} laptop over {LAPTOP_LIFETIME_YEARS} years "
        f"at {LAPTOP_HOURS_PER_DAY} h/day = ${LAPTOP_PRICE_USD:,.0f} / {hours_used:,} h = ${purchase:.4f}/h, "
        f"plus {LAPTOP_POWER_W:.0f} W x ${ELECTRICITY_USD_PER_KWH}/kWh = ${power:.4f}/h; "
        f"total ${purchase + power:.4f}/h. Memory and bandwidth are rough figures for a 16 GB "
        "dual-channel DDR4-3200 laptop (51 GB/s theoretical peak; real single-stream reads are "
        "often a quarter of that)."
    )


# --- AWS on-demand list prices, Linux, us-east-1 --------------------------------------------------
P4D_24XLARGE_USD_PER_HOUR = 21.96  # 8x A100 40GB; after AWS's June 2025 cut (was $32.77)
P5_48XLARGE_USD_PER_HOUR = 55.04  # 8x H100 80GB; after AWS's June 2025 cut (was $98.32)
GPUS_PER_P4D_OR_P5 = 8

HARDWARE_PRESETS: dict[str, HardwarePreset] = {
    p.key: p
    for p in (
        HardwarePreset(
            key="laptop-cpu",
            label="Laptop CPU (amortised)",
            kind="cpu",
            usd_per_hour=round(laptop_usd_per_hour(), 4),
            memory_gb=16.0,
            bandwidth_gb_s=51.2,
            source=_laptop_source(),
            as_of="2025-06",
        ),
        HardwarePreset(
            key="cloud-cpu",
            label="Cloud CPU (AWS c7i.xlarge, 4 vCPU)",
            kind="cpu",
            usd_per_hour=0.1785,
            memory_gb=8.0,
            bandwidth_gb_s=25.0,
            source=(
                "AWS EC2 c7i.xlarge (4 vCPU Intel Sapphire Rapids, 8 GiB), Linux on-demand list price, "
                "us-east-1. Bandwidth is a rough guess for a 4-vCPU slice of a shared 8-channel "
                "DDR5 socket, not a spec-sheet number."
            ),
            as_of="2025-06",
        ),
        HardwarePreset(
            key="t4",
            label="NVIDIA T4 (AWS g4dn.xlarge)",
            kind="gpu",
            usd_per_hour=0.526,
            memory_gb=16.0,
            bandwidth_gb_s=320.0,
            source=(
                "AWS EC2 g4dn.xlarge (1x NVIDIA T4, 4 vCPU), Linux on-demand list price, us-east-1; "
                "whole instance. Memory and bandwidth: NVIDIA T4 spec sheet (16 GB GDDR6, 320 GB/s)."
            ),
            as_of="2025-06",
        ),
        HardwarePreset(
            key="a10g",
            label="NVIDIA A10G (AWS g5.xlarge)",
            kind="gpu",
            usd_per_hour=1.006,
            memory_gb=24.0,
            bandwidth_gb_s=600.0,
            source=(
                "AWS EC2 g5.xlarge (1x NVIDIA A10G, 4 vCPU), Linux on-demand list price, us-east-1; "
                "whole instance. Memory and bandwidth: A10G spec (24 GB GDDR6, 600 GB/s)."
            ),
            as_of="2025-06",
        ),
        HardwarePreset(
            key="a100",
            label="NVIDIA A100 40GB (1/8 of AWS p4d.24xlarge)",
            kind="gpu",
            usd_per_hour=round(P4D_24XLARGE_USD_PER_HOUR / GPUS_PER_P4D_OR_P5, 4),
            memory_gb=40.0,
            bandwidth_gb_s=1555.0,
            source=(
                f"One GPU's share of AWS EC2 p4d.24xlarge (8x A100 40GB SXM), Linux on-demand list price, "
                f"us-east-1: ${P4D_24XLARGE_USD_PER_HOUR}/h / {GPUS_PER_P4D_OR_P5} GPUs, after AWS's "
                "June 2025 price cut (before it: $32.77/h). AWS does not rent one A100 alone. "
                "Memory and bandwidth: NVIDIA A100 40GB SXM spec sheet (1,555 GB/s)."
            ),
            as_of="2025-06",
        ),
        HardwarePreset(
            key="h100",
            label="NVIDIA H100 80GB (1/8 of AWS p5.48xlarge)",
            kind="gpu",
            usd_per_hour=round(P5_48XLARGE_USD_PER_HOUR / GPUS_PER_P4D_OR_P5, 4),
            memory_gb=80.0,
            bandwidth_gb_s=3350.0,
            source=(
                f"One GPU's share of AWS EC2 p5.48xlarge (8x H100 80GB SXM), Linux on-demand list price, "
                f"us-east-1: ${P5_48XLARGE_USD_PER_HOUR}/h / {GPUS_PER_P4D_OR_P5} GPUs, after AWS's "
                "June 2025 price cut (before it: $98.32/h). "
                "Memory and bandwidth: NVIDIA H100 SXM spec sheet (80 GB HBM3, 3.35 TB/s)."
            ),
            as_of="2025-06",
        ),
    )
}


def get_preset(key: str) -> HardwarePreset:
    """The preset for `key`, or a ValueError that lists the keys there are."""
    try:
        return HARDWARE_PRESETS[key]
    except KeyError:
        raise ValueError(f"unknown hardware preset {key!r}; choose one of {sorted(HARDWARE_PRESETS)}") from None


def with_price(preset: HardwarePreset, usd_per_hour: float) -> HardwarePreset:
    """A copy of `preset` at a user-edited price (e.g. a reserved or spot rate)."""
    _check_price(usd_per_hour)
    return replace(preset, usd_per_hour=float(usd_per_hour))


def usd_per_1m_tokens(tokens_per_s: float, usd_per_hour: float) -> float:
    """Cost of generating one million tokens at a steady `tokens_per_s` on hardware billed by the hour."""
    _check_speed(tokens_per_s)
    _check_price(usd_per_hour)
    usd_per_token = usd_per_hour / (tokens_per_s * SECONDS_PER_HOUR)
    return usd_per_token * TOKENS_PER_MILLION


def measured_device_kind(measured_device: str) -> DeviceKind | None:
    """The kind of a torch-style device string ("cpu", "cuda:0 (NVIDIA H100 ...)", "mps"); None if unknown."""
    device = measured_device.strip().lower()
    if device.startswith("cpu"):
        return "cpu"
    if device.startswith(("cuda", "mps", "xpu", "rocm", "hip")):
        return "gpu"
    return None


def cost_caveat(preset_kind: str, measured_device: str) -> str | None:
    """One plain sentence when the price and the measured speed come from different kinds of hardware."""
    if preset_kind not in DEVICE_KINDS:
        raise ValueError(f"preset_kind must be one of {DEVICE_KINDS}, got {preset_kind!r}")
    measured_kind = measured_device_kind(measured_device)
    if measured_kind == preset_kind:
        return None
    if measured_kind is None:
        return (
            f"The speed was measured on a device we do not recognise ({measured_device!r}), so this "
            f"{preset_kind.upper()} price may not match the speed it is multiplied by."
        )
    if preset_kind == "gpu":
        return (
            "This is a GPU price applied to a speed measured on a CPU, so the cost per token is "
            "overstated: the same model would run much faster on that GPU."
        )
    return (
        "This is a CPU price applied to a speed measured on a GPU, so the cost per token is "
        "understated: a CPU at that price would run the model much more slowly."
    )


def reprice(records: list, preset: HardwarePreset) -> list:
    """The same measurements priced at another hardware price (the sidebar's), speeds untouched."""
    return [
        replace(r, hardware_preset=preset.key, usd_per_hour=preset.usd_per_hour,
                usd_per_1m_tokens=usd_per_1m_tokens(r.decode_tokens_per_s_median, preset.usd_per_hour))
        for r in records
    ]
