import json

import pytest
import torch

from core.experiments import finetune_run
from core.models import load_model, load_tokenizer
from core.techniques import lora

LABELS = ["billing", "shipping", "technical", "returns", "account"]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Message {i} about {LABELS[i % 5]}\nTeam:", "completion": LABELS[i % 5]}) + "\n"
                            for i in range(40)))
    return path


FAST = dict(steps=3, batch_size=4, eval_items=6)


def test_only_adapter_weights_change(tiny_dir, tiny):
    base = load_model(tiny_dir)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = lora.attach(base, lora.FinetuneSettings(rank=4))
    tok = load_tokenizer(tiny_dir)
    examples = [lora.Example(f"q{i}", LABELS[i % 5]) for i in range(8)]
    lora.train(model, tok, examples, lora.FinetuneSettings(rank=4, steps=3, batch_size=4), lambda f, m: None, lambda: False)
    changed = {n for n, p in model.named_parameters() if "lora_" in n}
    assert changed and all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    base_now = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                for k, v in model.state_dict().items() if "lora_" not in k}
    for k, v in before.items():
        assert torch.equal(base_now[k], v), f"base weight {k} changed"  # frozen, stored tensor: exact
    trainable, total = model.get_nb_trainable_parameters()
    assert lora.count_parameters(model) == (trainable, total)


def test_merge_equals_unmerged(tiny_dir):
    base = load_model(tiny_dir)
    model = lora.attach(base, lora.FinetuneSettings(rank=4))
    with torch.no_grad():  # make the adapters non-zero so the merge has something to do
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.eval()
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.inference_mode():
        unmerged = model(input_ids=ids).logits
        merged = model.merge_and_unload()(input_ids=ids).logits
    assert torch.allclose(unmerged, merged, atol=1e-4)


def test_run_saves_adapter_and_reports_every_field(tiny_dir, data_file, data_dir, monkeypatch):
    from core import models

    monkeypatch.setattr(models, "prepare", lambda spec, progress=None: tiny_dir)
    result, model = finetune_run.run_finetune("tiny-random-llama", lora.FinetuneSettings(**FAST), task=None, data=data_file)
    d = result.to_dict()
    for key in ("method", "trainable_params", "total_params", "trainable_pct", "peak_mem_mb", "train_seconds", "usd_cost",
                "adapter_mb", "accuracy_before", "accuracy_after", "accuracy_after_ci95", "merged_decode_tokens_per_s",
                "unmerged_decode_tokens_per_s"):
        assert d[key] is not None, key
    assert 0 < result.trainable_pct < 100
    assert result.merged_equals_unmerged is True
    assert (data_dir / "adapters").is_dir()
    saved = list((data_dir / "adapters").iterdir())
    assert len(saved) == 1 and (saved[0] / "adapter_model.safetensors").is_file()
    assert len(result.losses) == FAST["steps"]
    merged = json.loads(next((data_dir / "merged").iterdir()).joinpath("lab_run.json").read_text())
    assert merged["training_sha256"] == lora.training_key(None, data_file, 0)  # found again by content, not name


def test_cancel_leaves_no_partial_artifact(tiny_dir, data_file, data_dir, monkeypatch):
    from core import models

    monkeypatch.setattr(models, "prepare", lambda spec, progress=None: tiny_dir)
    steps = []
    with pytest.raises(lora.Stopped):
        finetune_run.run_finetune("tiny-random-llama", lora.FinetuneSettings(steps=50, batch_size=2, eval_items=4), task=None,
                          data=data_file, report=lambda f, m: steps.append(m), should_stop=lambda: len(steps) > 3)
    adapters = data_dir / "adapters"
    assert not adapters.exists() or not list(adapters.iterdir())


@pytest.mark.parametrize("content,message", [
    ("", "is empty"),
    ("\n\n", "is empty"),
    ("not json\n", "not valid JSON"),
    ('{"prompt": "p"}\n', "must both be texts"),
    ('{"prompt": "p", "completion": ""}\n', "must not be empty"),
])
def test_bad_data_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        lora.load_examples(path)


def test_single_label_is_refused(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"m{i}", "completion": "billing"}) + "\n" for i in range(20)))
    with pytest.raises(ValueError, match="single answer"):
        lora.load_task(None, path)


def test_settings_validation():
    with pytest.raises(ValueError, match="rank"):
        lora.FinetuneSettings(rank=0)
    with pytest.raises(ValueError, match="steps"):
        lora.FinetuneSettings(steps=0)
    assert lora.FinetuneSettings(method="full", rank=0).lr == 2e-5  # rank does not matter for full fine-tuning


def test_missing_target_modules_are_named(tiny_dir, data_file, data_dir, monkeypatch):
    from core import models

    monkeypatch.setattr(models, "prepare", lambda spec, progress=None: tiny_dir)
    with pytest.raises(ValueError, match=r"\['query_key_value'\] are not in this model"):
        finetune_run.run_finetune("tiny-random-llama", lora.FinetuneSettings(target_modules=("query_key_value",), **FAST),
                          task=None, data=data_file)
    assert not (data_dir / "adapters").exists()


def test_bundled_task_is_balanced_and_held_out():
    train, test = lora.load_task("support-routing")
    assert len(train) + len(test) >= 300
    assert set(lora.check_labels(train)) == set(LABELS) == {e.completion for e in test}
    assert not {e.prompt for e in train} & {e.prompt for e in test}


def test_cli_writes_the_promised_fields(data_file, tmp_path, data_dir, capsys):
    from core.__main__ import main

    out = tmp_path / "lora.json"
    code = main(["lora", "--model", "tiny-random-llama", "--data", str(data_file), "--steps", "2", "--batch-size", "4",
                 "--rank", "4", "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    # every phase reports, and none says 100% before the end: training, merging, then measuring the merged model
    lines = [line for line in err.splitlines() if line.startswith("[")]
    trained = next(i for i, line in enumerate(lines) if "fine-tune trained and saved" in line)
    assert not any(line.startswith("[100%]") for line in lines[:trained + 1]), lines
    assert any("merging the adapter" in line for line in lines[:trained]), lines
    assert any("measuring the merged model" in line for line in lines[trained + 1:]), lines
    result = json.loads(out.read_text())
    for key in ("method", "trainable_params", "total_params", "trainable_pct", "peak_mem_mb", "train_seconds", "usd_cost",
                "adapter_mb", "accuracy_before", "accuracy_after", "accuracy_after_ci95", "merged_decode_tokens_per_s",
                "unmerged_decode_tokens_per_s"):
        assert key in result
    from core.store import ResultStore

    stored = ResultStore().all(model="tiny-random-llama")
    assert len(stored) == 1 and stored[0].family == "lora"  # it appears on the Trade-off Map


@pytest.mark.parametrize("args,message", [
    (["--rank", "0"], "rank"),
    (["--steps", "0"], "steps"),
    (["--targets", "nope_proj"], "nope_proj"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(args, message, data_file, data_dir, capsys):
    from core.__main__ import main

    code = main(["lora", "--model", "tiny-random-llama", "--data", str(data_file), "--no-store", *args])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("error:")
    assert not (data_dir / "adapters").exists()


def test_cli_empty_data_file(tmp_path, data_dir, capsys):
    from core.__main__ import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["lora", "--data", str(empty), "--no-store"]) == 2
    assert f"{empty} is empty" in capsys.readouterr().err
    assert not (data_dir / "adapters").exists()
