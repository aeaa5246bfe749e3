"""What a GGUF variant asks llama.cpp for: the file type, and whether an importance matrix steers
its rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.techniques.gguf.export import GGUFError

QuantType = Literal["f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q3_k_m", "q2_k"]

# llama.cpp's `enum llama_ftype` values (llama.h): the whole-file type the quantizer aims at.
FTYPES: dict[str, int] = {
    "f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q2_k": 10, "q3_k_m": 12, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18,
}


@dataclass(frozen=True)
class GGUFConfig:
    quant: QuantType
    imatrix: bool = False  # weigh the quantizer's rounding error by activations seen on calibration text
    # Export this checkpoint instead of the model's own (a distilled student, a merged fine-tune), so the
    # variant is measured against the model it came from: "" = the model's own checkpoint.
    source: str = ""

    def __post_init__(self) -> None:
        if self.quant not in FTYPES:
            raise GGUFError(f"Unknown GGUF quant type {self.quant!r}; choose from {', '.join(FTYPES)}")
        if self.imatrix and self.quant in ("f32", "f16", "q8_0"):
            raise GGUFError(f"an importance matrix changes nothing for {self.quant}: it has no rounding to steer")

    @property
    def file_stem(self) -> str:
        return self.quant + ("-imatrix" if self.imatrix else "")
