"""The budget search: the error estimate, the solver, the recipe in llama.cpp's terms, bad input, and a real file."""

from __future__ import annotations

import re

import gguf as gguflib
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core import cli, techniques
from core.experiments import budget_search
from core.launch.jobqueue import JobQueue
from core.measure import benchmark, fit, quant_error
from core.measure.quant_error import Option
from core.store import jsonl
from core.techniques import gguf
from core.techniques.gguf import budget as gguf_budget, searched as gguf_searched
from core.techniques.gguf.budget import Choice, SensitivityTable, TensorRow
from core.views import budget
from tests.test_pages import ROOT, no_errors

needs_llama = pytest.mark.skipif(gguf.llama_cpp_problem() is not None,
                                 reason=f"llama.cpp unavailable here: {gguf.llama_cpp_problem()}")


def _synthetic(n: int = 12, seed: int = 0) -> dict[str, list[Option]]:
    """n tensors of different sizes and sensitivities; each type halves bytes-per-weight and multiplies error."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        weights, sensitivity = int(rng.integers(1_000, 10_000)), float(rng.lognormal(0, 1.5))
        out[f"blk.{i}.attn_q.weight"] = [Option(t, int(weights * bpw / 8), sensitivity * 2.0 ** (-2 * bpw))
                                         for t, bpw in (("q8_0", 8.5), ("q5_0", 5.5), ("q4_0", 4.5))]
    return out


def test_solver_meets_the_budget_and_beats_every_uniform_choice_that_fits():
    options = _synthetic()
    low, high = quant_error.bounds(options)
    for size in np.linspace(low, high, 7).astype(int):
        choice = quant_error.solve(options, int(size))
        assert quant_error.total_bytes(choice) <= size
        for qtype in ("q8_0", "q5_0", "q4_0"):
            uniform = {n: next(o for o in opts if o.qtype == qtype) for n, opts in options.items()}
            if quant_error.total_bytes(uniform) <= size:
                assert quant_error.total_err(choice) <= quant_error.total_err(uniform) + 1e-12


def test_solver_leaves_no_affordable_upgrade_unbought():
    options = _synthetic()
    low, high = quant_error.bounds(options)
    size = (low + high) // 2
    choice = quant_error.solve(options, size)
    left = size - quant_error.total_bytes(choice)
    for name, opts in options.items():
        better = [o for o in opts if o.err < choice[name].err]
        assert all(o.bytes - choice[name].bytes > left for o in better), name


def test_solver_refuses_a_budget_below_the_smallest_mix():
    options = _synthetic()
    low, _ = quant_error.bounds(options)
    with pytest.raises(ValueError, match="below the smallest possible mix"):
        quant_error.solve(options, low - 1)


def test_weighted_error_weighs_columns_by_importance():
    ref = np.ones((4, 3), np.float32)
    q = ref.copy()
    q[:, 2] += 0.5  # error only in column 2
    assert quant_error.weighted_error(ref, ref, None) == (0.0, 0.0)
    absolute, relative = quant_error.weighted_error(ref, q, np.array([1.0, 1.0, 10.0]))
    assert absolute == pytest.approx(4 * 0.25 * 10) and relative == pytest.approx(10 / 48)
    with pytest.raises(ValueError, match="importance has"):
        quant_error.weighted_error(ref, q, np.ones(5))


def test_spearman_ranks_with_ties_and_refuses_too_few_pairs():
    assert quant_error.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert quant_error.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(quant_error.spearman([1, 2], [1, 2]))


def test_tensor_names_group_by_layer_and_kind():
    assert gguf_budget.group_of("blk.3.attn_q.weight") == (3, "attn_q")
    assert gguf_budget.group_of("blk.29.ffn_down.weight") == (29, "ffn_down")
    assert gguf_budget.group_of("token_embd.weight") == (-1, "token_embd")
    with pytest.raises(ValueError, match="not a weight matrix"):
        gguf_budget.group_of("blk.3.attn_norm.bias")


def test_recipe_becomes_anchored_tensor_type_overrides_and_words():
    types = {"blk.1.attn_q.weight": "q8_0", "blk.11.attn_q.weight": "q4_0", "blk.2.attn_q.weight": "q8_0",
             "blk.3.attn_q.weight": "q8_0", "token_embd.weight": "q5_0"}
    args = gguf_budget.tensor_type_args(types)
    assert r"^token_embd\.weight$=q5_0" in args
    for name, qtype in types.items():  # each name matched by exactly the pattern carrying its type
        matched = [a.rsplit("=", 1)[1] for a in args if re.search(a.rsplit("=", 1)[0], name)]
        assert matched == [qtype], name
    words = gguf_budget.describe(types)
    assert "attention Q: Q8_0 in layers 1-3; Q4_0 in layers 11" in words
    assert any(w.startswith("token embedding") and w.endswith("Q5_0") for w in words)


def _table() -> SensitivityTable:
    rows = tuple(TensorRow(f"blk.{i}.ffn_up.weight", i, "ffn_up", 1000,
                           (Choice("q4_0", 562, 4.0, 0.04), Choice("q5_0", 687, 1.0, 0.01), Choice("q8_0", 1062, 0.01, 1e-4)))
                 for i in range(4))
    return SensitivityTable("test", False, rows, overhead_bytes=500, f16_bytes=500 + 4 * 2000)


def test_plan_fits_and_refuses_budgets_outside_what_files_can_be():
    table = _table()
    low, high = table.size_bounds()
    assert (low, high) == (500 + 4 * 562, 8500)
    recipe = table_recipe = gguf_budget.plan(table, 500 + 2 * 562 + 2 * 1062)
    assert table_recipe.file_bytes <= recipe.budget_bytes
    assert sorted(recipe.types.values()) == ["q4_0", "q4_0", "q8_0", "q8_0"] or recipe.estimate < 2 * 4.0 * 0.01 + 1
    with pytest.raises(ValueError, match="below the smallest file"):
        gguf_budget.plan(table, low - 1)
    with pytest.raises(ValueError, match="above the F16 file"):
        gguf_budget.plan(table, high + 1)


def test_cli_bad_input_is_one_error_line_and_nothing_is_written(data_dir, capsys):
    for argv in (["budget"], ["budget", "--budgets-mb", "90", "--match-presets", "q4_k_m"],
                 ["budget", "--budgets-mb", "0"], ["budget", "--budgets-mb", "ninety"],
                 ["budget", "--match-presets", "q9_x"]):
        assert cli.main(argv) == 2, argv
        assert capsys.readouterr().err.startswith("error: ")
    assert not budget_search.results_path().exists()


def test_an_architecture_llama_cpp_cannot_take_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(
        tmp_path / "gpt2-tiny")
    with pytest.raises(gguf.GGUFError, match="cannot convert a 'gpt2' model"):
        gguf_budget.sensitivity(tmp_path / "gpt2-tiny", imatrix=False)


@needs_llama
def test_a_searched_recipe_is_written_by_llama_cpp_with_every_type_it_chose(tiny_dir, data_dir):
    table = gguf_budget.sensitivity(tiny_dir, imatrix=False, threads=1)
    assert gguf_budget.sensitivity(tiny_dir, imatrix=False, threads=1) == table  # cached, reread
    low, high = table.size_bounds()
    recipe = gguf_budget.plan(table, (low + high) // 3)
    assert len(set(recipe.types.values())) > 1  # a mix, not one type
    path = gguf_budget.write(tiny_dir, recipe, table, threads=1)
    written = {t.name: t.tensor_type.name.lower() for t in gguflib.GGUFReader(path).tensors if t.name in recipe.types}
    assert written == recipe.types
    assert path.stat().st_size <= recipe.budget_bytes
    assert path.stat().st_size == pytest.approx(recipe.file_bytes, rel=0.01)
    # the file is a registry variant: the sweep, the map and Decide measure it like every GGUF file
    variant = techniques.get(recipe.key)
    assert variant.family == "gguf" and variant.runtimes == ("llama.cpp",)
    assert variant.artifact(tiny_dir, 1, lambda _m: None)[0] == path
    assert gguf_searched.searched_keys(str(tiny_dir)) == [recipe.key]


def test_a_searched_variant_whose_file_was_never_made_says_how_to_make_it(tiny_dir):
    variant = techniques.get("gguf-auto-80-imatrix")
    assert variant.label == "GGUF searched mix, 80 MB with the importance matrix"
    with pytest.raises(gguf.GGUFError, match="python -m core budget --budgets-mb 80 --imatrix"):
        variant.artifact(tiny_dir, 1, lambda _m: None)
    with pytest.raises(ValueError, match="Unknown technique"):
        techniques.get("gguf-auto-eighty")


def test_calibration_groups_drop_one_group_from_q8_0_and_fall_back_where_a_type_does_not_fit():
    table = _table()
    types = budget_search.group_types(table, "ffn_up", 1, 2, "q4_0")
    assert [types[f"blk.{i}.ffn_up.weight"] for i in range(4)] == ["q8_0", "q4_0", "q4_0", "q8_0"]
    types = budget_search.group_types(table, "ffn_up", 0, 0, "q2_k")  # these rows cannot take q2_k
    assert types["blk.0.ffn_up.weight"] == "q4_0"


def _two_kind_table() -> SensitivityTable:
    """Six layers of two kinds and a token table: the same estimate per type everywhere."""
    choices = (Choice("q4_0", 562, 4.0, 0.04), Choice("q5_0", 687, 1.0, 0.01), Choice("q8_0", 1062, 0.01, 1e-4))
    rows = [TensorRow(f"blk.{i}.{k}.weight", i, k, 1000, choices) for i in range(6) for k in ("attn_q", "ffn_down")]
    rows.append(TensorRow("token_embd.weight", -1, "token_embd", 1000, choices))
    return SensitivityTable("two", False, tuple(rows), overhead_bytes=500, f16_bytes=500 + 13 * 2000)


def test_calibration_covers_each_kind_in_each_third_and_the_tables_outside_the_blocks():
    groups = budget_search.calibration_groups(_two_kind_table())
    assert groups == [("attn_q", 0, 1, "q4_0"), ("attn_q", 2, 3, "q4_0"), ("attn_q", 4, 5, "q4_0"),
                      ("ffn_down", 0, 1, "q3_k"), ("ffn_down", 2, 3, "q3_k"), ("ffn_down", 4, 5, "q3_k"),
                      ("token_embd", -1, -1, "q4_0")]


def test_measured_scales_make_the_search_spare_the_group_that_hurts_most():
    """Equal estimates everywhere, but the token table measured 100x as harmful per unit: the search keeps it at
    Q8_0 and the prediction is the all-Q8_0 KLD plus each group's scaled extra error."""
    table = _two_kind_table()
    groups = [{"kind": k, "first": f, "last": l, "qtype": "q4_0", "estimate": 0.0399 * (2 if f >= 0 else 1),
               "kld": 0.0, "scale": 0.1} for k, f, l, _ in budget_search.calibration_groups(table)]
    groups[-1]["scale"] = 10.0
    cal = budget_search.Calibration(0.004, groups, [], float("nan"), float("nan"))
    scale = cal.scales(table)
    assert scale["token_embd.weight"] == 10.0 and scale["blk.5.ffn_down.weight"] == 0.1
    size = 500 + 12 * 562 + 1062
    recipe = gguf_budget.plan(table, size, "relative", scale)
    assert recipe.types["token_embd.weight"] == "q8_0"
    expected = 0.004 + 12 * 0.1 * (0.04 - 1e-4)
    assert cal.predict(table, recipe.types) == pytest.approx(expected)


def test_frontier_rows_and_the_preset_a_searched_file_is_set_beside():
    result = {"rows": [
        {"key": "gguf-auto-100", "role": "searched", "size_bytes": 100e6, "kld_mean": 0.03, "kld_mean_uncertainty": 0.001,
         "predicted_kld": 0.028},
        {"key": "gguf-q4_k_m", "role": "preset", "size_bytes": 101e6, "kld_mean": 0.05, "kld_mean_uncertainty": 0.001,
         "predicted_kld": None},
        {"key": "gguf-q4_k_m-imatrix", "role": "preset", "size_bytes": 100e6, "kld_mean": 0.04,
         "kld_mean_uncertainty": 0.001, "predicted_kld": None},
        {"key": "gguf-q3_k_m", "role": "preset", "size_bytes": 90e6, "kld_mean": 0.1, "kld_mean_uncertainty": 0.002,
         "predicted_kld": None}]}
    rows = budget_search.frontier_rows(result)
    assert [r["key"] for r in rows if r["role"] == "preset"] == ["gguf-q3_k_m", "gguf-q4_k_m-imatrix", "gguf-q4_k_m"]
    assert budget_search.nearest_preset(result, 100e6)["key"] == "gguf-q4_k_m"  # the plain preset of that size


@needs_llama
def test_the_page_and_job_refuse_budgets_outside_what_files_can_be_before_anything_is_queued(tiny_dir, data_dir):
    table = gguf_budget.sensitivity(tiny_dir, imatrix=False, threads=1)
    low, high = table.size_bounds()
    budget_search.check_request(str(tiny_dir), [(low + high) // 2])  # a budget inside the range passes
    with pytest.raises(ValueError, match="below the smallest file"):
        budget_search.check_request(str(tiny_dir), [low - 1])
    with pytest.raises(ValueError, match="above the F16 file"):
        budget_search.check_request(str(tiny_dir), [high + 1])
    with pytest.raises(ValueError, match="positive file size"):
        budget_search.check_request(str(tiny_dir), [0])
    assert not budget_search.results_path().exists()


def _result(searched_kld=0.03, searched_speed=150.0):
    rows = [{"key": "gguf-auto-105", "role": "searched", "size_bytes": 105.4e6, "kld_mean": searched_kld,
             "kld_mean_uncertainty": 0.001, "kld_p99": 0.3, "same_top": 0.95, "ppl": 12.0,
             "decode_tokens_per_s": searched_speed, "predicted_kld": 0.028, "budget_bytes": 105.45e6,
             "recipe_words": ["attention Q: Q5_0 in layers 0-29", "token embedding (tied: also the output table): Q8_0"],
             "tensor_type_args": []}]
    for key, size, kld in (("gguf-q4_k_m", 105.45e6, 0.046), ("gguf-q4_k_m-imatrix", 105.45e6, 0.029),
                           ("gguf-q3_k_m", 93.5e6, 0.115)):
        rows.append({"key": key, "role": "preset", "size_bytes": size, "kld_mean": kld, "kld_mean_uncertainty": 0.001,
                     "kld_p99": 0.4, "same_top": 0.9, "ppl": 12.5, "decode_tokens_per_s": 140.0,
                     "predicted_kld": None, "budget_bytes": None, "recipe_words": [], "tensor_type_args": []})
    cal = {"base_kld": 0.004, "groups": [{"kind": "attn_q", "first": 0, "last": 9, "qtype": "q4_0", "estimate": 0.1,
                                          "kld": 0.006, "scale": 0.02}],
           "held_out": [{"label": "x", "predicted": 0.01, "kld": 0.012}], "spearman": 0.9, "mean_abs_error": 0.002}
    return {"model": "m", "imatrix": True, "table": "t", "text": "prose.txt", "n_ctx": 512, "calibration": cal,
            "provenance": {"hardware": "h", "device": "cpu", "threads": 2, "versions": {}}, "at": 0.0,
            "rows": rows, "elapsed_s": 300.0, "complete": True}


def test_a_searched_file_is_set_beside_its_preset_and_the_imatrix_preset_in_words():
    result = _result()
    [row] = budget.searched_rows(result)
    words = budget.compare_sentence(row, result)
    assert "Against gguf-q4_k_m" in words and "less damage (-35% KLD)" in words
    assert "against gguf-q4_k_m-imatrix (KLD 0.0290): +3% KLD" in words and "slower" not in words
    slow = _result(searched_speed=100.0)
    assert "decodes slower" in budget.compare_sentence(budget.searched_rows(slow)[0], slow)
    fig = budget.figure(result)
    assert [t.name for t in fig.data] == ["searched files (a type per tensor)", "llama.cpp presets",
                                          "preset with importance matrix", "predicted by the search (before measuring)"]


def test_the_quantize_page_shows_a_stored_search_with_its_chart_and_recipe():
    result = _result()
    result["provenance"]["hardware"] = benchmark.hardware_fingerprint(benchmark.pick_device("auto"))
    jsonl.append(budget_search.results_path(), [result])
    at = AppTest.from_file(str(ROOT / "pages/quantize.py"), default_timeout=60).run()
    no_errors(at)
    text = " ".join(m.value for m in at.markdown)
    assert "gguf-auto-105: 105.4 MB" in text and "Recipe: attention Q: Q5_0 in layers 0-29" in text
    next(n for n in at.number_input if n.label == "File size budget, MB").set_value(90.0).run()
    next(b for b in at.button if b.label == "Search, write and measure").click().run()
    no_errors(at)
    [waiting] = JobQueue().snapshot().waiting  # progress and Stop: the job panel, as for a sweep
    assert waiting.job.kind == "budget" and waiting.job.args["budgets_bytes"] == [90_000_000]


def test_the_sensitivity_map_puts_each_tensors_predicted_damage_in_its_layer_and_kind():
    table = _two_kind_table()
    scale = {r.name: (10.0 if r.kind == "token_embd" else 0.1 * (1 + r.layer)) for r in table.rows}
    result = {"sensitivity": gguf_budget.heat_rows(table, scale)}
    assert budget.heat_types(result) == ["q8_0", "q5_0", "q4_0"]
    fig = budget.heat_map(result, "q4_0")
    z = fig.data[0].z
    assert list(fig.data[0].y) == ["attention Q", "MLP down"] and list(fig.data[0].x) == list(range(6))
    assert z[0][5] == pytest.approx(0.6 * (0.04 - 1e-4)) and z[0][0] < z[0][5]
    assert budget.heat_map(result, "q8_0").data[0].z[1][3] == 0.0  # Q8_0 is the reference: no extra damage
    [embd] = budget.outside_blocks(result, "q4_0")
    assert embd.startswith("token embedding (tied: also the output table) at Q4_0: +0.3990 nats")


def test_a_device_budget_leaves_room_for_the_kv_cache_and_the_runtime():
    room = fit.weights_budget(fit.DEVICE_PRESETS["phone-4gb"], fit.KVShape(30, 3, 64), context_tokens=2048)
    kv_mb = 2 * 30 * 3 * 64 * 2048 * 2 / 1e6  # keys and values, F16
    assert room.kv_cache_mb == pytest.approx(kv_mb)
    assert room.weights_mb == pytest.approx(2000.0 - kv_mb - fit.RUNTIME_OVERHEAD_MB)
    assert room.words().startswith("Phone, 4 GB: 2,000 MB usable - KV cache 47 MB")


def test_the_page_names_why_a_device_budget_cannot_be_worked_out_yet():
    at = AppTest.from_file(str(ROOT / "pages/quantize.py"), default_timeout=60).run()
    next(s for s in at.selectbox if s.label == "Budget from").set_value("phone-4gb").run()
    assert any("is not prepared yet" in e.value for e in at.error)  # an empty data dir: no checkpoint to size from


def test_the_sensitivity_map_opens_on_the_smallest_type_every_kind_can_take():
    table = _two_kind_table()
    rows = list(table.rows)
    rows[0] = TensorRow(rows[0].name, rows[0].layer, rows[0].kind, 1000,
                        (Choice("q2_k", 400, 9.0, 0.09), *rows[0].choices))  # one tensor alone can take Q2_K
    result = {"sensitivity": gguf_budget.heat_rows(SensitivityTable("t", False, tuple(rows), 500, 30000), {})}
    assert budget.heat_types(result)[-1] == "q2_k" and budget.widest_type(result) == "q4_0"
