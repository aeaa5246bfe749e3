import pytest

from core.experiments import sweep
from core.store import ResultStore
from core.store.records import REQUIRED_FIELDS

FAST = dict(new_tokens=4, repeats=2, warmup_runs=1, mc_max_items=6, ppl_window_tokens=64, ppl_max_tokens=256)


def test_sweep_on_tiny_model_stores_complete_records(data_dir):
    store = ResultStore()
    events = []
    records = sweep.run_sweep("tiny-random-llama", ["fp32", "bf16", "dyn-int8"], sweep.SweepSettings(**FAST),
                              store=store, progress=events.append)
    assert [r.technique for r in records] == ["fp32", "bf16", "dyn-int8"]
    for r in records:
        d = r.to_dict()
        assert all(d.get(f) is not None for f in REQUIRED_FIELDS)
        assert len(r.decode_tokens_per_s_samples) == 2  # warm-up excluded
        assert r.decode_tokens_per_s_p10 <= r.decode_tokens_per_s_median <= r.decode_tokens_per_s_p90
        assert r.settings["prompt_tokens"] > 0 and r.settings["eval_set_sha256"]
        assert r.mc_accuracy_ci95[0] <= r.mc_accuracy <= r.mc_accuracy_ci95[1]
    fp32 = records[0]
    assert fp32.kld_mean == 0.0 and fp32.top1_agreement == 1.0  # the reference pass itself, reused: exact
    assert records[1].size_mb < fp32.size_mb
    assert {r.technique for r in store.all()} == {"fp32", "bf16", "dyn-int8"}
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def test_cancel_keeps_finished_variants(data_dir):
    store = ResultStore()
    done = []

    def progress(p):
        if p.step == "done":
            done.append(p.variant)

    with pytest.raises(sweep.Cancelled):
        sweep.run_sweep("tiny-random-llama", ["fp32", "bf16", "fp16"], sweep.SweepSettings(**FAST), store=store,
                        progress=progress, should_stop=lambda: len(done) >= 1)
    assert [r.technique for r in store.all()] == ["fp32"]


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="new_tokens"):
        sweep.SweepSettings(new_tokens=1)
    with pytest.raises(ValueError, match="hardware preset"):
        sweep.SweepSettings(hardware_preset="abacus")
    with pytest.raises(ValueError, match="usd_per_hour"):
        sweep.SweepSettings(usd_per_hour=-1)


def test_bad_eval_file_fails_before_any_variant_is_measured(data_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a"], "answer": 0}\n')
    store = ResultStore()
    with pytest.raises(ValueError, match="at least 2"):
        sweep.run_sweep("tiny-random-llama", ["fp32"], sweep.SweepSettings(**FAST, eval_set=str(bad)), store=store)
    assert store.all() == []
