"""GPU paths: bitsandbytes CUDA kernels and CUDA memory statistics. Skipped where no NVIDIA GPU is visible."""

import pytest
import torch

from core import techniques
from core.measure import benchmark
from core.runtimes import as_runner

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no NVIDIA GPU visible")]


@pytest.mark.parametrize("key", ["fp16", "bf16", "int8", "nf4", "nf4-dq"])
def test_variant_runs_on_cuda_and_reports_gpu_memory(key, tiny_dir):
    technique = techniques.get(key)
    assert technique.why_not("cuda") is None
    with benchmark.PeakMemory("cuda") as mem:
        model = technique.make(tiny_dir, "cuda")
        run = benchmark.timed_generation(as_runner(model, "cuda"), torch.tensor([[5, 6, 7]], device="cuda"), 4, device="cuda")
    assert len(run.token_ids) == 4
    assert mem.delta_bytes > 0
    assert next(model.parameters()).device.type == "cuda"


def test_dynamic_int8_refuses_cuda_with_a_reason():
    assert "CPU only" in techniques.get("dyn-int8").why_not("cuda")


def test_distillation_step_and_speculative_decoding_on_cuda(tiny_dir):
    from core.experiments import speculative
    from core.models import load_model
    from core.techniques import distillation

    teacher = load_model(tiny_dir, device="cuda")
    student = distillation.make_student(teacher, [1])
    batch = torch.randint(0, 200, (2, 16), device="cuda")
    loss = distillation.distill_loss(student(input_ids=batch).logits, teacher(input_ids=batch).logits.detach(),
                                     batch, 1.0, 1.0)
    loss.backward()
    assert float(loss) >= 0 and student.model.layers[0].mlp.up_proj.weight.grad is not None
    speculative.configure_draft(student, 3)
    ids = torch.tensor([[5, 6, 7, 8]])
    plain = speculative.generate(teacher, ids, 12, 0, None, "cuda")
    assisted = speculative.generate(teacher, ids, 12, 0, student, "cuda")
    assert plain.tokens == assisted.tokens and assisted.drafted > 0


def test_qlora_trains_adapters_on_a_4bit_base_on_cuda(tiny_dir, tmp_path, monkeypatch):
    import json

    from core import models
    from core.experiments import finetune_run
    from core.techniques import lora

    labels = ["billing", "shipping", "returns"]
    data = tmp_path / "task.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Message {i} about {labels[i % 3]}\nTeam:", "completion": labels[i % 3]})
                            + "\n" for i in range(30)))
    monkeypatch.setattr(models, "prepare", lambda spec, progress=None: tiny_dir)
    result, _ = finetune_run.run_finetune("tiny-random-llama", lora.FinetuneSettings(method="qlora", steps=3, batch_size=4,
                                                                                       eval_items=6), task=None,
                                          data=data, device="cuda")
    assert result.method == "qlora" and 0 < result.trainable_pct < 100 and len(result.losses) == 3
    assert result.device.startswith("cuda")
