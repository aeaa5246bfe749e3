"""What the CPU is and which of its instruction sets change a kernel's speed, read from /proc/cpuinfo.

Two machines can share a model name and differ 2-8x in speed (an EPYC with AVX-512 and one without), so the lab
tells them apart by vendor, family, model and stepping and by the features its kernels use. The same facts pick
the flags llama.cpp is compiled with (core/runtimes/llamacpp_build.py). Standard library only: the build runs
this before anything else is installed.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# cpuinfo flag -> the name the lab shows; only instruction sets that change matmul kernels' speed, in this order.
SPEED_FEATURES = {
    "avx2": "AVX2", "fma": "FMA", "f16c": "F16C", "avx_vnni": "AVX-VNNI",
    "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI", "avx512_bf16": "AVX-512 BF16", "avx512vbmi": "AVX-512 VBMI",
    "amx_tile": "AMX", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16",
    "asimd": "NEON", "asimddp": "NEON dot product", "i8mm": "I8MM", "sve": "SVE", "sve2": "SVE2", "sme": "SME",
}


@dataclass(frozen=True)
class CpuFacts:
    model_name: str
    vendor: str  # "AuthenticAMD", "GenuineIntel", "ARM implementer 0x41", ...
    family: str
    model: str
    stepping: str
    flags: frozenset[str]  # every flag the kernel reports for the first processor
    arch: str  # platform.machine(): "x86_64", "aarch64", ...

    @property
    def speed_features(self) -> list[str]:
        """The instruction sets the lab's kernels care about, as shown ("AVX2", "AVX-512 VNNI", ...)."""
        return [shown for flag, shown in SPEED_FEATURES.items() if flag in self.flags]

    @property
    def identity(self) -> str:
        """'family 25 model 17 stepping 1': what tells two chips with one marketing name apart."""
        return f"family {self.family} model {self.model} stepping {self.stepping}"

    def has(self, *flags: str) -> bool:
        return all(f in self.flags for f in flags)


def _first_block(text: str) -> dict[str, str]:
    """The key: value pairs of the first processor in a cpuinfo text (every core says the same on one machine)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip().lower(), value.strip())
    return out


def parse_cpuinfo(text: str, arch: str | None = None) -> CpuFacts:
    """CpuFacts from a /proc/cpuinfo text (x86 says 'vendor_id'/'cpu family'/'model'; ARM 'CPU implementer'...)."""
    block = _first_block(text)
    flags = frozenset((block.get("flags") or block.get("features") or "").split())
    if "vendor_id" in block:
        vendor, family, model, stepping = (block.get("vendor_id", "?"), block.get("cpu family", "?"),
                                           block.get("model", "?"), block.get("stepping", "?"))
    else:
        vendor = f"ARM implementer {block.get('cpu implementer', '?')}"
        family, model, stepping = (block.get("cpu architecture", "?"), block.get("cpu part", "?"),
                                   block.get("cpu variant", "?") + "r" + block.get("cpu revision", "?"))
    # ARM texts often name no model: say the architecture, not platform.processor(), as the text may be another's
    name = block.get("model name") or block.get("hardware") or (arch or platform.machine())
    return CpuFacts(name, vendor, family, model, stepping, flags, arch or platform.machine())


def this_cpu() -> CpuFacts:
    try:
        return parse_cpuinfo(CPUINFO.read_text(errors="replace"))
    except OSError:  # not Linux: what the platform module says, and no features
        name = platform.processor() or platform.machine()
        return CpuFacts(name, "?", "?", "?", "?", frozenset(), platform.machine())
