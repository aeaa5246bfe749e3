"""Page tests: each page runs alone in AppTest with shared state seeded, core calls patched where slow."""

import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.measure import benchmark
from core.models import saved
from core.store import ResultStore
from tests.factories import make_record, run_queued_jobs_here

ROOT = Path(__file__).resolve().parent.parent
HERE = benchmark.hardware_fingerprint("cpu")


# Streamlit's resource cache outlives one AppTest: every page test starts and ends with it empty.
pytestmark = pytest.mark.usefixtures("fresh_caches")


def page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / name), default_timeout=60)


def seed_sweep(store: ResultStore) -> None:
    common = dict(model="smollm2-135m-instruct", hardware=HERE, run_id="r1", sample_prompt="Why is the sky blue?")
    store.add(make_record(technique="fp32", label="FP32 (reference)", sample_generation="Because of scattering.", **common))
    store.add(make_record(technique="nf4", family="quantization", label="NF4", size_mb=173.0,
                          decode_tokens_per_s_median=24.0, decode_tokens_per_s_p10=22.0, decode_tokens_per_s_p90=26.0,
                          kld_mean=0.12, top1_agreement=0.9, perplexity=28.5, sample_generation="Light scatters.", **common))


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_app_frame_renders_home_and_sidebar():
    at = page("app.py").run()
    no_errors(at)
    assert at.title[0].value == "LLM Trade-off Lab"
    assert "smollm2-135m-instruct" in at.sidebar.selectbox[0].options or at.sidebar.selectbox[0].value
    assert at.sidebar.number_input[0].value > 0  # the preset's price, editable


def test_quantize_page_empty_store_guides_the_user():
    at = page("pages/quantize.py").run()
    no_errors(at)
    assert any("No measurements" in i.value for i in at.info)
    assert at.multiselect[0].value == ["fp32", "bf16", "int8", "nf4", "dyn-int8", "gguf-q8_0", "gguf-q4_k_m"]


def test_quantize_page_estimates_each_variant_and_drops_the_slow_one_in_one_click():
    common = dict(model="smollm2-135m-instruct", hardware=HERE, family="quantization")
    settings = {"new_tokens": 32, "warmup_runs": 1, "repeats": 5, "prompt_tokens": 40, "ppl_tokens": 4096, "mc_items": 194}
    store = ResultStore()
    store.add(make_record(technique="fp32", label="FP32", decode_tokens_per_s_median=10.0, settings=settings,
                          variant_facts={"measure_s": 40.0}, **common | {"family": "reference"}))
    store.add(make_record(technique="int8", label="INT8", decode_tokens_per_s_median=0.6, ttft_ms_median=14000.0,
                          settings=settings, variant_facts={"measure_s": 500.0}, **common))
    at = page("pages/quantize.py").run()
    no_errors(at)
    labels = [e.label for e in at.expander]
    assert "Estimated time here: 9.0 min for 2 variants, not known yet for 5 others; 1 variant runs far slower than usual" in labels
    assert any("INT8" in w.value and "6% of the fp32 reference" in w.value for w in at.warning)
    table = at.dataframe[0].value
    rows = {r["variant"]: r for r in table.to_dict("records")}
    assert rows["FP32 (reference)"]["estimated time"] == "40 s" and rows["FP32 (reference)"]["flag"] == ""
    int8 = next(r for name, r in rows.items() if name.startswith("INT8"))
    assert int8["estimated time"] == "8.3 min" and int8["flag"] == "slow here"
    drop = next(b for b in at.button if b.label.startswith("Drop slow variants"))
    drop.click().run()
    no_errors(at)
    assert "int8" not in at.multiselect[0].value and "fp32" in at.multiselect[0].value


def test_quantize_page_shows_results_and_side_by_side():
    seed_sweep(ResultStore())
    at = page("pages/quantize.py").run()
    no_errors(at)
    table = at.dataframe[-1].value  # the first table is the time estimate
    assert set(table["technique"]) == {"fp32", "nf4"}
    texts = [t.value for t in at.text]
    assert "Because of scattering." in texts and "Light scatters." in texts


def test_measure_button_starts_a_sweep_that_stores_results(monkeypatch):
    import core.experiments.sweep

    calls = {}

    def fake_sweep(model, keys, settings, store=None, progress=None, should_stop=None):
        calls["args"] = (model, keys, settings.new_tokens)
        progress(core.experiments.sweep.Progress(1.0, "fp32", "done", "FP32 done"))
        store.add(make_record(model="smollm2-135m-instruct", hardware=HERE))
        return []

    monkeypatch.setattr(core.experiments.sweep, "run_sweep", fake_sweep)
    at = page("pages/quantize.py").run()
    next(b for b in at.button if b.label == "Measure").click().run()  # the estimate's probe button comes first
    from core.launch.jobqueue import JobQueue

    waiting = JobQueue().snapshot().waiting
    assert [w.job.kind for w in waiting] == ["sweep"] and waiting[0].job.owner == "presenter"
    assert any("Waiting: 1" in m.value for m in at.markdown)  # the page shows the queue
    run_queued_jobs_here()  # the job's body, in this process so that the fake applies
    assert calls["args"] == ("smollm2-135m-instruct", ["fp32", "bf16", "int8", "nf4", "dyn-int8", "gguf-q8_0",
                                                       "gguf-q4_k_m"], core.experiments.sweep.SweepSettings().new_tokens)
    assert len(ResultStore().all()) == 1
    no_errors(at)


def test_measure_refuses_a_bad_uploaded_eval_set_by_name(monkeypatch):
    from ui import uploads

    class Upload:
        name = "mine.jsonl"

        def getvalue(self):
            return b'{"question": "q", "choices": ["only one"], "answer": 0}\n'

    with pytest.raises(ValueError, match="mine.jsonl, line 1: .*at least 2"):
        uploads.save_upload(Upload(), __import__("core.measure.evaluate", fromlist=["x"]).load_mc_jsonl)


def test_tradeoff_map_empty_store_says_what_to_do():
    at = page("pages/tradeoff_map.py").run()
    no_errors(at)
    assert any("Nothing measured" in i.value for i in at.info)


def test_tradeoff_map_draws_both_maps_with_frontier():
    seed_sweep(ResultStore())
    at = page("pages/tradeoff_map.py").run()
    no_errors(at)
    charts = at.get("plotly_chart")
    assert len(charts) == 3
    assert "Pareto" in charts[0].proto.spec and "Pareto" in charts[1].proto.spec
    captions = " ".join(c.value for c in at.caption)
    assert "NF4" in captions


def test_tradeoff_map_log_by_default_linear_on_toggle_and_a_row_per_point():
    seed_sweep(ResultStore())
    at = page("pages/tradeoff_map.py").run()
    no_errors(at)
    assert '"type":"log"' in at.get("plotly_chart")[0].proto.spec.replace(" ", "")
    assert sorted(at.dataframe[0].value["technique"]) == ["fp32", "nf4"]
    at.radio[1].set_value("linear").run()
    no_errors(at)
    assert '"type":"log"' not in at.get("plotly_chart")[0].proto.spec.replace(" ", "")


def test_tradeoff_map_redraws_for_a_new_result_and_a_new_price():
    # figures are built once for every session (ui/frame.shared): a new result or price must still show
    store = ResultStore()
    seed_sweep(store)
    at = page("pages/tradeoff_map.py").run()
    assert "INT8 (new)" not in at.get("plotly_chart")[0].proto.spec
    store.add(make_record(technique="int8", family="quantization", label="INT8 (new)", model="smollm2-135m-instruct",
                          hardware=HERE, run_id="r2", decode_tokens_per_s_median=18.0))
    at.run()
    no_errors(at)
    assert "INT8 (new)" in at.get("plotly_chart")[0].proto.spec
    money = at.get("plotly_chart")[1].proto.spec
    from core.measure import cost
    from ui.frame import SidebarChoice

    laptop = cost.HARDWARE_PRESETS["laptop-cpu"]
    at.session_state["choice"] = SidebarChoice("smollm2-135m-instruct", cost.with_price(laptop, laptop.usd_per_hour * 3))
    at.run()
    no_errors(at)
    assert at.get("plotly_chart")[1].proto.spec != money


def test_a_store_file_replaced_while_the_lab_runs_gives_a_message_not_a_traceback():
    store = ResultStore()
    seed_sweep(store)
    at = page("pages/tradeoff_map.py").run()  # the server now holds the store open
    no_errors(at)
    saved = store.path.read_bytes()
    store.path.write_bytes(b"not a database at all" * 100)
    at.run()
    assert not at.exception
    assert any("not an SQLite database" in e.value for e in at.error)
    store.path.write_bytes(saved)  # put right: the next run reads it again
    at.run()
    no_errors(at)
    assert len(at.get("plotly_chart")) == 3


def test_tradeoff_map_switches_quality_metric():
    seed_sweep(ResultStore())
    at = page("pages/tradeoff_map.py").run()
    at.radio[0].set_value("perplexity").run()
    no_errors(at)
    assert "erplexity" in at.get("plotly_chart")[0].proto.spec


def test_home_page_links_and_explains_every_variant():
    from core import techniques

    at = page("app.py").run()  # home links to other pages, which exist only under app.py's navigation
    no_errors(at)
    body = " ".join(m.value for m in at.markdown)
    for t in techniques.TECHNIQUES.values():
        assert t.label in body


def test_lora_page_guides_then_shows_runs(monkeypatch):
    at = page("pages/lora.py").run()
    no_errors(at)
    assert any("No fine-tuning runs" in i.value for i in at.info)
    result = {"method": "lora", "settings": {"rank": 8}, "trainable_params": 2442240, "trainable_pct": 1.78,
              "accuracy_before": 0.02, "accuracy_after": 0.96, "accuracy_after_ci95": [0.92, 0.99], "train_seconds": 197.0,
              "seconds_per_step_median": 2.1, "peak_mem_mb": 2100.0, "usd_cost": 0.01, "adapter_mb": 9.8,
              "adapter_pct_of_full": 1.8, "unmerged_decode_tokens_per_s": 24.5, "merged_decode_tokens_per_s": 33.9,
              "device": "cpu", "hardware": HERE, "threads": 2,
              "examples": [{"prompt": "p", "expected": "billing", "before": "No", "after": "billing"}]}
    ResultStore().add(make_record(model="smollm2-135m-instruct", technique="lora-support-routing-r8", family="lora",
                                  hardware=HERE, variant_facts={"finetune": result}))
    at = page("pages/lora.py").run()
    no_errors(at)
    assert at.dataframe[0].value["accuracy after"][0] == 0.96
    assert "billing" in set(at.dataframe[1].value["after"])


def test_lora_page_refuses_a_bad_upload_before_training():
    at = page("pages/lora.py").run()
    at.radio[0].set_value("your own JSONL").run()
    at.button[0].click().run()
    assert any("Upload a JSONL" in e.value for e in at.error)


@pytest.fixture
def tiny_teacher_everywhere(tiny_dir, monkeypatch):
    """Pages prepare the sidebar's model; here that resolves to the tiny checkpoint (no GGUF conversion)."""
    from core import models

    monkeypatch.setattr(models, "prepare", lambda spec, progress=None: tiny_dir if spec.source != "local" else Path(spec.location))
    return tiny_dir


def seed_distillation(store: ResultStore) -> None:
    facts = {"student_path": "/data/students/run/step-000150", "student_layers": 15, "teacher_layers": 30,
             "settings": {"steps": 150}, "tokens_seen": 153600, "train_seconds": 600.0, "device": "cpu", "hardware": HERE,
             "threads": 2, "corpus": "teacher's answers", "heldout_kld_pruned": 3.2, "heldout_kld_distilled": 0.9,
             "usd_cost": 0.002, "usd_per_hour": 0.01}
    common = dict(model="smollm2-135m-instruct", hardware=HERE, run_id="d1", sample_prompt="Why is the sky blue?")
    store.add(make_record(technique="fp32", label="FP32 (reference)", sample_generation="Teacher text.", **common))
    store.add(make_record(technique="pruned-15L", family="distillation", label="Pruned to 15 layers (untrained)",
                          kld_mean=4.0, decode_tokens_per_s_median=34.0, sample_generation="garbled",
                          variant_facts={"distillation": facts | {"role": "student_pruned"}}, **common))
    store.add(make_record(technique="distilled-15L-x", family="distillation", label="Distilled student, 15 layers",
                          kld_mean=1.1, decode_tokens_per_s_median=34.0, sample_generation="Student text.",
                          variant_facts={"distillation": facts | {"role": "student_distilled"}}, **common))


def test_distill_page_shows_the_plan_then_guides(tiny_teacher_everywhere):
    at = page("pages/distill.py").run()
    no_errors(at)
    assert any("No distilled student" in i.value for i in at.info)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Layers kept"] == "1 of 2" and metrics["Expected decode speed-up"].endswith("x")


def test_distill_page_shows_teacher_pruned_and_distilled_side_by_side(tiny_teacher_everywhere):
    seed_distillation(ResultStore())
    at = page("pages/distill.py").run()
    no_errors(at)
    table = at.dataframe[0].value
    assert list(table["model"]) == ["FP32 (reference)", "Pruned to 15 layers (untrained)", "Distilled student, 15 layers"]
    assert list(table["speed-up vs teacher"]) == [1.0, 1.7, 1.7]
    texts = [t.value for t in at.text]
    assert {"Teacher text.", "garbled", "Student text."} <= set(texts)


def test_distill_button_runs_training_then_measuring_in_the_background(tiny_teacher_everywhere, monkeypatch):
    from core.experiments import distill_run

    calls = []
    monkeypatch.setattr(distill_run, "run_distill", lambda *a, **k: calls.append("train") or "result")
    monkeypatch.setattr(distill_run, "measure", lambda *a, **k: calls.append("measure") or [])
    monkeypatch.setattr(distill_run, "summary", lambda result, records: {})  # the job's result, for a Ray caller
    at = page("pages/distill.py").run()
    at.button(key="distill").click().run()
    no_errors(at)
    from core.launch.jobqueue import JobQueue

    run_queued_jobs_here()  # the job's body, in this process so that the fake applies
    assert calls == ["train", "measure"] and JobQueue().snapshot().recent[0].state == "done"


def test_distill_page_asks_for_a_file_before_training_on_own_text(tiny_teacher_everywhere):
    at = page("pages/distill.py").run()
    at.radio(key="training_text").set_value("your own text").run()
    at.button(key="distill").click().run()
    assert any("Upload a text or JSONL file" in e.value for e in at.error)


def test_distill_page_shows_the_last_speculative_comparison(tiny_teacher_everywhere, tiny):
    from core.experiments import speculative
    from core.techniques import distillation

    teacher, tokenizer = tiny
    distillation.save_checkpoint(distillation.make_student(teacher, [1]), tokenizer,
                                 saved.students_dir() / "run", 3,
                                 {"teacher": "smollm2-135m-instruct", "student_layers": 1, "teacher_layers": 2,
                                  "run": "run", "complete": True, "steps": 3})
    row = {"title": "Sky", "prompt": "p", "identical": True, "tokens": 10, "plain_s": 1.0, "assisted_s": 1.25,
           "speedup": 0.8, "drafted": 8, "accepted": 6, "target_passes": 4}
    speculative.save_result(speculative.SpeculativeResult(
        model="smollm2-135m-instruct", draft="d", draft_facts={}, draft_tokens=4, max_new_tokens=10,
        identical_output=True, acceptance_rate=0.75, tokens_per_pass=2.5, speedup=0.8,
        speedup_per_prompt={"median": 0.8, "p10": 0.8, "p90": 0.8}, plain_tokens_per_s=10.0,
        assisted_tokens_per_s=8.0, prompts=[row], device="cpu", threads=2, hardware=HERE, versions={},
        created_at="2026-11-26T12:00:00"))
    at = page("pages/distill.py").run()
    no_errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Output identical to the teacher's"] == "yes" and metrics["Drafted tokens accepted"] == "75%"
    assert at.selectbox[0].options[0].startswith("Student 1/2 layers")


def test_the_shared_page_module_imports_pandas_whole_before_any_page_draws():
    # Thirty first page runs at once raced on pandas' first import (through plotly's sys.modules lookup) and on
    # transformers' lazily resolved names.
    code = ("import sys; import ui.frame; m = sys.modules.get('pandas'); "
            "assert m is not None and hasattr(m, 'Series') and not m.__spec__._initializing, 'pandas not whole'; "
            "t = sys.modules['transformers']; assert {'AutoConfig', 'AutoTokenizer'} <= set(vars(t)), 'lazy names'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]


def test_the_lab_slows_streamlits_config_pollers():
    """Streamlit polls config.toml and secrets.toml every 0.2 s on the timing cores; ui/turns.py slows that. If a
    Streamlit upgrade renames the setting, this fails instead of the slowdown quietly going away."""
    from streamlit.watcher import polling_path_watcher

    from ui import frame, turns  # noqa: F401  (every page imports the frame, which brings turns)

    assert polling_path_watcher._POLLING_PERIOD_SECS == turns.CONFIG_POLL_S >= 5


def test_the_door_is_what_streamlits_websocket_hands_browser_messages_to(monkeypatch):
    """ui/turns.py puts the door in front of Streamlit by replacing the server's handle_backmsg. If a Streamlit
    upgrade hands browser messages to something else, the door would silently hold nothing: here a rerun message
    goes through Streamlit's own websocket endpoint, and it must reach the door's offer, then Streamlit's handler."""
    import asyncio

    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.runtime import Runtime
    from streamlit.web.server.starlette.starlette_websocket import create_websocket_routes

    from ui import turns

    handled, offered = [], []
    monkeypatch.setattr(Runtime, "handle_backmsg",  # Streamlit's own handler, as the door finds it on the class
                        lambda self, session_id, msg, **kwargs: handled.append((session_id, msg.WhichOneof("type"))))
    server = Runtime.__new__(Runtime)  # the server's runtime, without starting a server
    monkeypatch.setattr(Runtime, "_instance", server)
    server.connect_session = lambda **kwargs: "session-1"
    server.disconnect_session = lambda *args, **kwargs: None
    # built before the door, as a running server's routes are: the door comes with the first page run
    [route] = create_websocket_routes(server, None)  # what a running server serves at /_stcore/stream
    door = turns.door()
    assert door is not None and server.lab_door is door
    real_offer = door.offer
    monkeypatch.setattr(door, "offer", lambda session, request, starts_run: offered.append((session, starts_run))
                        or real_offer(session, request, starts_run))

    message = BackMsg()
    message.rerun_script.query_string = ""
    incoming = [{"type": "websocket.connect"}, {"type": "websocket.receive", "bytes": message.SerializeToString()},
                {"type": "websocket.disconnect", "code": 1000}]

    async def receive():
        return incoming.pop(0)

    async def send(_):
        return None

    scope = {"type": "websocket", "path": "/_stcore/stream", "raw_path": b"/_stcore/stream", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1:8501")], "scheme": "ws", "server": ("127.0.0.1", 8501),
             "client": ("127.0.0.1", 50000), "subprotocols": [], "root_path": ""}
    asyncio.run(route.handle(scope, receive, send))
    assert offered == [("session-1", True)], "Streamlit's websocket no longer calls the door's handle_backmsg"
    assert handled == [("session-1", "rerun_script")]  # the gate was open: let through to Streamlit's own handler


def test_a_preset_false_keeps_streamlit_out_of_its_pages_folder_mode(monkeypatch):
    """ui/server.py sets PagesManager.uses_pages_directory False before Streamlit starts, so that pages/ beside app.py
    never puts a run in Streamlit's legacy multipage mode (a listing of pages/, app.py one entry of it). If a
    Streamlit upgrade renames the flag, or has PagesManager.__init__ set it whatever it was, this fails instead of a
    fresh server's first visitor getting that listing again (tests/test_first_visit_browser.py shows it)."""
    import inspect

    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.runtime.scriptrunner import script_runner

    assert "uses_pages_directory" in vars(PagesManager)  # a class attribute, shared by every session's manager
    monkeypatch.setattr(PagesManager, "uses_pages_directory", None)  # as a fresh server has it
    PagesManager(str(ROOT / "app.py"))
    assert PagesManager.uses_pages_directory is True, "without the preset, pages/ beside app.py sets it"
    monkeypatch.setattr(PagesManager, "uses_pages_directory", False)  # what the launcher does
    PagesManager(str(ROOT / "app.py"))
    assert PagesManager.uses_pages_directory is False, "PagesManager.__init__ overrode the preset False"
    # the flag the script runner reads to choose the legacy mode for a run
    assert "if PagesManager.uses_pages_directory:" in inspect.getsource(script_runner.ScriptRunner)


def test_the_launcher_sets_the_flag_then_hands_over_to_streamlits_own_cli(monkeypatch):
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.web import cli

    from ui import server

    seen = []
    monkeypatch.setattr(PagesManager, "uses_pages_directory", None)
    monkeypatch.setattr(cli, "main", lambda **kwargs: seen.append((PagesManager.uses_pages_directory, kwargs)))
    server.main()
    assert seen == [(False, {"prog_name": "streamlit"})]
