"""A careless user's checkpoint folder is refused by name of what is wrong, before anything loads or is stored."""

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from transformers import LlamaConfig

from core import models
from core.__main__ import main
from core.store import ResultStore

FAST = ["--new-tokens", "4", "--repeats", "2", "--warmup", "1", "--mc-max-items", "5"]


@pytest.fixture
def careless(tmp_path) -> Path:
    """config.json of a valid Llama and its weights pickled with torch.save: no tokenizer, no safetensors."""
    folder = tmp_path / "my-llama"
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=64, architectures=["LlamaForCausalLM"])
    config.save_pretrained(folder)
    torch.save({"model.embed_tokens.weight": torch.zeros(64, 16)}, folder / "pytorch_model.bin")
    return folder


def test_sweep_names_the_missing_tokenizer_and_the_pickle_weights(careless, data_dir, capsys):
    assert main(["sweep", "--model", str(careless), "--techniques", "fp32", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert "no tokenizer files (tokenizer.json and tokenizer_config.json" in err[0]
    assert "pickle files (pytorch_model.bin), which the lab never loads" in err[0]
    assert "save_pretrained(folder, safe_serialization=True)" in err[0] and "model.safetensors" in err[0]
    assert "sentencepiece" not in err[0] and "tiktoken" not in err[0]  # transformers' misleading advice, not ours
    assert not (data_dir / "results.sqlite").exists()  # refused before the store was opened
    assert ResultStore().all() == []


def test_each_problem_is_named_alone(careless, tiny_dir):
    shutil.copy(tiny_dir / "tokenizer.json", careless / "tokenizer.json")
    assert models.checkpoint_problems(careless) == [
        "its weights are pickle files (pytorch_model.bin), which the lab never loads because unpickling can run code: "
        "save them with model.save_pretrained(folder, safe_serialization=True) or convert them to model.safetensors"]
    (careless / "pytorch_model.bin").unlink()
    assert models.checkpoint_problems(careless) == [
        "it holds no weights (model.safetensors): save them with model.save_pretrained(folder)"]
    shutil.copy(tiny_dir / "model.safetensors", careless / "model.safetensors")
    assert models.checkpoint_problems(careless) == []
    assert models.checkpoint_problems(tiny_dir) == []


@pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is not None, reason="sentencepiece is installed here")
def test_a_sentencepiece_only_tokenizer_without_sentencepiece_is_named(careless):
    (careless / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(models.ModelError, match="only tokenizer is a sentencepiece tokenizer.model"):
        models.resolve(str(careless))


def _sidebar_only():
    from ui.frame import sidebar

    sidebar()


def test_the_sidebar_says_the_same_when_the_folder_is_typed(careless, fresh_caches):
    at = AppTest.from_function(_sidebar_only, default_timeout=60).run()
    at.sidebar.selectbox(key="model_key").set_value(models.CUSTOM_CHOICE).run()
    at.sidebar.text_input(key="model_custom").input(str(careless)).run()
    assert not at.exception, [e.value for e in at.exception]
    said = " ".join(w.value for w in at.sidebar.warning)
    assert "no tokenizer files" in said and "pickle files (pytorch_model.bin)" in said
