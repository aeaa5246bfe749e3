import pytest
import torch

from core.measure import benchmark
from core.models import build_tiny_model
from core.runtimes import as_runner


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class CountingModel(torch.nn.Module):
    """Advances a fake clock by a known time per forward: 0.5 s for a prompt, 0.1 s per decode step."""

    def __init__(self, clock: FakeClock, vocab: int = 11):
        super().__init__()
        self.clock, self.vocab, self.calls = clock, vocab, 0
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, cache=None, use_cache=True):
        self.calls += 1
        self.clock.now += 0.5 if input_ids.shape[-1] > 1 else 0.1
        logits = torch.zeros(1, input_ids.shape[-1], self.vocab)
        logits[..., self.calls % self.vocab] = 1.0
        return type("Out", (), {"logits": logits, "cache": object()})()


def test_repeat_excludes_warmups_and_calls_once_per_run():
    calls = []
    out = benchmark.repeat(lambda: calls.append(1) or len(calls), warmup=2, repeats=3)
    assert out == [3, 4, 5]  # the first two calls were warm-ups and are not returned
    assert len(calls) == 5


@pytest.mark.parametrize("warmup,repeats", [(-1, 3), (0, 0)])
def test_repeat_rejects_bad_counts(warmup, repeats):
    with pytest.raises(ValueError, match="warmup"):
        benchmark.repeat(lambda: 1, warmup, repeats)


def test_timed_generation_splits_prefill_and_decode_with_fake_clock(quiet_machine):
    clock = FakeClock()
    model = CountingModel(clock)
    run = benchmark.timed_generation(as_runner(model), torch.ones(1, 7, dtype=torch.long), new_tokens=5, clock=clock)
    assert model.calls == 5  # one prefill + four decode steps, no hidden extra generate call
    assert run.ttft_s == pytest.approx(0.5)
    assert run.decode_s == pytest.approx(0.4)
    assert run.decode_tokens == 4  # tokens timed == tokens counted
    assert run.decode_tokens_per_s == pytest.approx(10.0)
    assert len(run.token_ids) == 5


def test_bench_generation_keeps_only_timed_samples(quiet_machine):
    clock = FakeClock()
    model = CountingModel(clock)
    bench = benchmark.bench_generation(as_runner(model), torch.ones(1, 3, dtype=torch.long), new_tokens=3, warmup=2,
                                       repeats=4, clock=clock)
    assert model.calls == (2 + 4) * 3
    assert len(bench.decode_tokens_per_s.samples) == 4
    assert bench.ttft_ms.median == pytest.approx(500.0)
    assert bench.decode_tokens_per_s.median == pytest.approx(10.0)


def test_percentiles_match_numpy_linear():
    import numpy as np

    xs = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    for q in (0, 10, 50, 90, 100):
        assert benchmark.percentile(xs, q) == pytest.approx(np.percentile(xs, q))
    spread = benchmark.Spread(tuple(xs))
    assert spread.median == pytest.approx(4.0)
    assert spread.p10 < spread.median < spread.p90


def test_bytes_held_counts_tied_weights_once():
    model, _ = build_tiny_model()
    expected = sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() dedups tied
    expected += sum(b.numel() * b.element_size() for b in model.buffers())
    assert benchmark.bytes_held(model) == expected
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_bytes_held_halves_for_bf16():
    model, _ = build_tiny_model()
    fp32 = benchmark.bytes_held(model)
    bf16 = benchmark.bytes_held(model.to(torch.bfloat16))
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert bf16 - buffers == pytest.approx((fp32 - buffers) / 2, rel=0.01)


def test_roofline():
    assert benchmark.roofline_tokens_per_s(10.0, 500_000_000) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        benchmark.roofline_tokens_per_s(10.0, 0)


def test_bandwidth_is_positive_and_sampled():
    spread = benchmark.measure_bandwidth_gb_s(size_mb=8, repeats=3)
    assert len(spread.samples) == 3 and spread.median > 0


def test_peak_memory_sees_an_allocation():
    benchmark.release_memory()
    with benchmark.PeakMemory(interval_s=0.001) as mem:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB
        block += 1
        import time; time.sleep(0.02)
        del block
    assert mem.delta_bytes > 40 * 2**20


def test_pick_device_refuses_missing_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert benchmark.pick_device("auto") == "cpu"
    with pytest.raises(ValueError, match="no NVIDIA GPU"):
        benchmark.pick_device("cuda")
