
import pytest

from core import models


def test_resolve_bundled_local_and_hub(tmp_path):
    assert models.resolve("smollm2-135m-instruct").source == "bundled-gguf"
    assert models.resolve("org/some-model").source == "hub"
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")  # resolve looks at file names only; loading reads them
    assert models.resolve(str(tmp_path)).source == "local"


@pytest.mark.parametrize("name,message", [
    ("", "No model named"),
    ("not a model", "Unknown model"),
])
def test_resolve_rejects_with_a_clear_message(name, message):
    with pytest.raises(models.ModelError, match=message):
        models.resolve(name)


def test_resolve_directory_without_config(tmp_path):
    with pytest.raises(models.ModelError, match="no config.json"):
        models.resolve(str(tmp_path))


def test_prepare_tiny_is_a_safetensors_checkpoint(data_dir):
    path = models.prepare(models.BUNDLED["tiny-random-llama"])
    assert (path / "config.json").is_file()
    assert list(path.glob("*.safetensors")) and not list(path.glob("*.bin"))
    assert models.checkpoint_ready("tiny-random-llama")
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp dir left behind


def test_failed_save_leaves_nothing(data_dir, monkeypatch):
    model, tokenizer = models.build_tiny_model()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer, "save_pretrained", boom)
    target = data_dir / "models" / "broken"
    with pytest.raises(OSError):
        models.save_atomically(target, model, tokenizer)
    assert not target.exists()
    assert not list((data_dir / "models").iterdir())


@pytest.mark.parametrize("kind", ["bert-masked-lm", "t5"])
def test_check_loadable_refuses_non_causal(tmp_path, kind):
    from transformers import BertConfig, T5Config

    if kind == "t5":
        config = T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64)
    else:
        config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                            architectures=["BertForMaskedLM"])
    config.save_pretrained(tmp_path)
    with pytest.raises(models.ModelError, match="not a causal"):
        models.check_loadable(tmp_path)


def test_check_loadable_refuses_too_large_before_loading(tiny_dir, monkeypatch):
    monkeypatch.setattr(models.loading, "available_memory_bytes", lambda: 1000)
    with pytest.raises(models.ModelError, match="only 0.0 GB of memory is free"):
        models.check_loadable(tiny_dir)


def test_check_loadable_counts_parameters(tiny_dir, tiny):
    model, _ = tiny
    assert models.check_loadable(tiny_dir) == sum(p.numel() for p in model.parameters())


def test_unreachable_hub_id_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(models.ModelError, match="unreachable|No model"):
        models.prepare(models.resolve("lab-tests/does-not-exist-anywhere"))


def test_uninstalled_bundled_model_says_how_to_install(monkeypatch):
    spec = models.BUNDLED["gemma3-270m"]
    monkeypatch.setattr(models.checkpoints, "gguf_path", lambda s: None)
    with pytest.raises(models.ModelError, match="make gemma"):
        models.prepare(spec)


def test_models_never_trust_remote_code():
    import inspect

    source = "".join(inspect.getsource(m) for m in (models, models.catalog, models.checkpoints, models.loading))
    assert "trust_remote_code=True" not in source
    assert "trust_remote_code=False" in source


def test_weights_load_on_the_calling_thread(tiny_dir, monkeypatch):
    """A loader thread pool would start extra OpenMP teams that slow every later decode (see core/models/)."""
    import transformers.core_model_loading as loading

    from core.models import load_model

    def no_pool(*args, **kwargs):
        raise AssertionError("transformers loaded weights on a thread pool")

    monkeypatch.setattr(loading, "ThreadPoolExecutor", no_pool)
    assert load_model(tiny_dir).config.num_hidden_layers == 2


def test_a_model_that_needs_its_own_code_is_refused_with_the_reason(tmp_path, tiny_dir):
    import json
    import shutil

    from core import models

    evil = tmp_path / "evil-model"
    shutil.copytree(tiny_dir, evil)
    config = json.loads((evil / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (evil / "config.json").write_text(json.dumps(config))
    (evil / "modeling_evil.py").write_text("raise SystemExit('this must never run')\n")
    with pytest.raises(models.ModelError, match="this model needs its own code, which the lab never runs") as caught:
        models.resolve(str(evil))
    assert "modeling_evil.py" in str(caught.value) and "upgrade" not in str(caught.value)
