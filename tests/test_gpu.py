"""GPU paths: bitsandbytes CUDA kernels and CUDA memory statistics. Skipped where no NVIDIA GPU is visible."""

import pytest
import torch

from core import benchmark, techniques

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no NVIDIA GPU visible")]


@pytest.mark.parametrize("key", ["fp16", "bf16", "int8", "nf4", "nf4-dq"])
def test_variant_runs_on_cuda_and_reports_gpu_memory(key, tiny_dir):
    technique = techniques.get(key)
    assert technique.why_not("cuda") is None
    with benchmark.PeakMemory("cuda") as mem:
        model = technique.make(tiny_dir, "cuda")
        run = benchmark.timed_generation(model, torch.tensor([[5, 6, 7]], device="cuda"), 4, device="cuda")
    assert len(run.token_ids) == 4
    assert mem.delta_bytes > 0
    assert next(model.parameters()).device.type == "cuda"


def test_dynamic_int8_refuses_cuda_with_a_reason():
    assert "CPU only" in techniques.get("dyn-int8").why_not("cuda")
