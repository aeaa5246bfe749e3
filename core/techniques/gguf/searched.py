"""A searched GGUF file (fit-my-budget, core/techniques/gguf/budget.py) as a registry variant,
"gguf-auto-<MB>[-imatrix]", so the sweep, the map, Decide and the Report measure and show it like every other GGUF file.

The file is made by the budget search (`python -m core budget` or the Quantize page's Fit my budget), never by the
registry: asking for a variant whose file does not exist says how to make it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core.models import ModelError, checkpoint_ready, prepare, resolve
from core.techniques.gguf.budget import budget_dir
from core.techniques.gguf.cache import file_facts, is_intact
from core.techniques.gguf.export import GGUFError
from core.techniques.gguf.variants import PREFIX, _no_torch_model, _unsupported
from core.techniques.registry import Technique, register_resolver

AUTO_PREFIX = "gguf-auto-"
_KEY = re.compile(r"^gguf-auto-(\d+(?:\.\d+)?)(-imatrix)?$")
_FILE = re.compile(r"^(gguf-auto-\d+(?:\.\d+)?(?:-imatrix)?)-[0-9a-f]{8}\.gguf$")  # key + the recipe's digest


@dataclass(frozen=True)
class SearchedConfig:
    key: str  # gguf-auto-105-imatrix
    budget_mb: float
    imatrix: bool

    @property
    def file_stem(self) -> str:
        return self.key.removeprefix(PREFIX)


def searched_file(checkpoint: Path, key: str) -> Path | None:
    """The newest intact file the budget search wrote under this key for this checkpoint."""
    found = [p for p in budget_dir(checkpoint).glob(f"{key}-*.gguf")
             if (m := _FILE.match(p.name)) and m.group(1) == key and is_intact(p)]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def searched_keys(model_name: str) -> list[str]:
    """The searched variants on disk for a model (none before its checkpoint is prepared), smallest first."""
    try:
        spec = resolve(model_name)
    except ModelError:  # the page says what is wrong with the model; here there is simply nothing to offer
        return []
    if spec.source != "local" and not checkpoint_ready(spec.key):
        return []
    folder = budget_dir(prepare(spec))
    keys = {m.group(1) for p in folder.glob("gguf-auto-*.gguf") if (m := _FILE.match(p.name))}
    return sorted(keys, key=lambda k: (float(_KEY.match(k).group(1)), k))


def _artifact(checkpoint: Path, config: SearchedConfig, _threads: int, _progress) -> tuple[Path, dict]:
    path = searched_file(checkpoint, config.key)
    if path is None:
        raise GGUFError(f"no searched file {config.key} exists for this model; make it with `python -m core budget "
                        f"--budgets-mb {config.budget_mb:g}{' --imatrix' if config.imatrix else ''}` or the Quantize "
                        "page's Fit my budget")
    return path, file_facts(path)


def searched_technique(key: str) -> Technique | None:
    if (m := _KEY.match(key)) is None:
        return None
    config = SearchedConfig(key, float(m.group(1)), bool(m.group(2)))
    how = " with the importance matrix" if config.imatrix else ""
    return Technique(
        key, f"GGUF searched mix, {config.budget_mb:g} MB{how}", "gguf", config,
        f"A llama.cpp file whose type was chosen tensor by tensor to fit {config.budget_mb:g} MB with the least "
        f"damage the lab predicted from measurements on its calibration text{how}.",
        "It is tuned to this model and to text like the calibration text; its decode speed can differ from a preset "
        "of the same size, because mixed types unpack differently.",
        _no_torch_model, _unsupported, runtimes=("llama.cpp",), build_artifact=_artifact)


register_resolver(searched_technique)
