"""Loading a checkpoint: refusing what cannot load here (not a causal LM, too large for free memory)
from the config alone, then the model and tokenizer, never running code shipped with the weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from core.models.catalog import ModelError


# transformers loads weights on a pool of 4 threads by default, and each pool thread that converts a large
# tensor starts an OpenMP team of its own. With more OpenMP threads alive than cores, libgomp stops spinning
# between parallel regions, so every short op then pays a thread wake-up: measured here, that made quantized
# linears 2x slower and decode 10-30% slower at random, depending on which teams outlived the load. Loading
# on the calling thread (the lab's one torch thread) keeps one team per process.
os.environ.setdefault("HF_DEACTIVATE_ASYNC_LOAD", "1")


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
