"""Distillation and speculative decoding on the tiny model: shapes, loss, checkpoints, cancel, bad input."""

import json

import pytest
import torch

from core import models
from core.experiments import distill_run, speculative
from core.models import load_model, load_tokenizer, saved as saved_dirs
from core.techniques import distill_corpus as C, distillation as D

FAST = dict(student_layers=1, steps=4, batch_size=2, seq_len_tokens=32, corpus_answer_tokens=8, checkpoints=2,
            warmup_steps=1)


@pytest.fixture
def corpus_file(tmp_path):
    paragraphs = [f"Paragraph {i}: the river runs past the mill and the miller counts {i} sacks of grain before noon."
                  for i in range(40)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(paragraphs))
    return path


@pytest.fixture
def tiny_teacher(tiny_dir, monkeypatch):
    monkeypatch.setattr(models, "prepare", lambda spec, progress=None: tiny_dir if spec.source == "tiny" else D.Path(spec.location))
    return tiny_dir


def test_spread_keeps_first_and_last_layers_in_order():
    assert D.pick_layers(30, 15) == [0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29]
    assert D.pick_layers(30, 15, "every-other") == list(range(0, 30, 2))
    assert D.pick_layers(30, 3, "first") == [0, 1, 2]
    for n in range(1, 30):
        kept = D.pick_layers(30, n)
        assert len(set(kept)) == n and kept == sorted(kept)


@pytest.mark.parametrize("layers", [0, 2, 3])
def test_student_must_be_smaller_than_teacher(layers, tiny_teacher, data_dir):
    with pytest.raises(ValueError, match="at least 1 layer|between 1 and 1 layers"):
        distill_run.run_distill("tiny-random-llama", D.DistillSettings(**FAST | {"student_layers": layers}))
    assert not saved_dirs.students_dir().exists()


def test_student_is_the_teacher_minus_layers_and_generates(tiny):
    teacher, _ = tiny
    student = D.make_student(teacher, [1])
    assert student.config.num_hidden_layers == 1 and len(student.model.layers) == 1
    # the weight is copied, not recomputed: exact equality
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight, teacher.model.layers[1].mlp.up_proj.weight)
    assert teacher.config.num_hidden_layers == 2  # the teacher is untouched
    out = student.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=5, do_sample=False)  # KV cache indices fit
    assert out.shape == (1, 8)


def test_plan_counts_parameters_without_loading(tiny_dir, tiny):
    teacher, _ = tiny
    shape = D.plan(tiny_dir, 1)
    assert shape.teacher_params == sum(p.numel() for p in teacher.parameters())
    assert shape.student_params == sum(p.numel() for p in D.make_student(teacher, shape.kept_layers).parameters())
    assert 1 < shape.expected_speedup < 2


def test_loss_is_zero_for_identical_logits_and_mixes_cross_entropy():
    logits = torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    assert abs(float(D.distill_loss(logits, logits, ids, 2.0, 1.0))) < 1e-5
    student = torch.randn(2, 5, 11)
    kd = float(D.distill_loss(student, logits, ids, 1.0, 1.0))
    ce = float(torch.nn.functional.cross_entropy(student[:, :-1].flatten(0, 1), ids[:, 1:].flatten()))
    assert kd > 0 and float(D.distill_loss(student, logits, ids, 1.0, 0.25)) == pytest.approx(0.25 * kd + 0.75 * ce, rel=1e-5)


def test_distillation_loss_goes_down_on_a_fixed_batch(tiny):
    teacher, _ = tiny
    student = D.make_student(teacher, [0])
    batch = torch.randint(0, 200, (4, 32), generator=torch.Generator().manual_seed(0))
    params = D.trainable_parameters(student, train_embeddings=False)
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    with torch.no_grad():
        target = teacher(input_ids=batch).logits
    losses = []
    for _ in range(30):
        loss = D.distill_loss(student(input_ids=batch).logits, target, batch, 1.0, 1.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert not student.get_input_embeddings().weight.requires_grad  # the token table stays the teacher's


def test_checkpoint_round_trip_gives_the_same_logits(tiny, tmp_path):
    teacher, tokenizer = tiny
    student = D.make_student(teacher, [1])
    saved = D.save_checkpoint(student, tokenizer, tmp_path / "run", 7, {"student_layers": 1})
    assert saved.name == "step-000007" and saved_dirs.latest_checkpoint(tmp_path / "run") == saved
    again = load_model(saved)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids).logits, student(input_ids=ids).logits, atol=1e-6)
    assert json.loads((saved / "lab_student.json").read_text())["step"] == 7
    D.save_checkpoint(student, tokenizer, tmp_path / "run", 9, {})
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["step-000009"]  # older one dropped, no temp left


def test_run_on_a_text_file_saves_the_student_and_reports_every_field(tiny_teacher, corpus_file, data_dir):
    log = D.TrainLog()
    result = distill_run.run_distill("tiny-random-llama", D.DistillSettings(**FAST), corpus_file, usd_per_hour=1.0, log=log)
    assert result.student_layers == 1 and result.teacher_layers == 2
    assert len(result.losses) == 4 and result.tokens_seen == 4 * 2 * 32
    assert result.heldout_tokens > 0 and result.train_tokens > result.heldout_tokens
    assert [s for s, _ in result.heldout_kld_curve] == [0, 2, 4]
    student = load_model(result.student_path)
    assert student.config.num_hidden_layers == 1
    # the reported final divergence is the saved student's, measured on the held-out part
    assert result.heldout_kld_curve[-1][1] == result.heldout_kld_distilled  # one stored number reported twice
    heldout = C.corpus_from_file(corpus_file, load_tokenizer(tiny_teacher), 0.1).heldout
    kld, top1 = D.heldout_divergence(load_model(tiny_teacher), student, heldout, "cpu")
    # recomputed after a reload: a near-tied argmax may flip, so agreement is compared to within a few positions
    assert kld == pytest.approx(result.heldout_kld_distilled, rel=1e-4)
    assert top1 == pytest.approx(result.heldout_top1_distilled, abs=0.02)
    facts = json.loads((D.Path(result.student_path) / "lab_student.json").read_text())
    assert facts["complete"] is True and facts["teacher"] == "tiny-random-llama"
    assert [s.path for s in saved_dirs.saved_students()] == [D.Path(result.student_path)]


def test_default_corpus_is_the_teachers_answers_cached_with_a_held_out_part(tiny_teacher, data_dir):
    teacher, tokenizer = load_model(tiny_teacher), load_tokenizer(tiny_teacher)
    calls = []
    rows = C.teacher_answers(teacher, tokenizer, "tiny-random-llama", 8, "cpu", lambda f, m: calls.append(f), lambda: False)
    assert len(rows) == len(C.load_prompts()) and calls[-1] == 1.0
    again = C.teacher_answers(None, tokenizer, "tiny-random-llama", 8, "cpu", lambda f, m: None, lambda: False)
    assert again == rows  # cached: no model needed the second time
    corpus = C.corpus_from_answers(rows, tokenizer, 0.1)
    assert 0.03 < len(corpus.heldout) / len(rows) < 0.2
    heldout_ids = {r["id"] for r in rows if C.is_heldout(r["id"], 0.1)}
    assert len(heldout_ids) == len(corpus.heldout)


def test_stopped_corpus_keeps_finished_answers_for_next_time(tiny_teacher, data_dir):
    teacher, tokenizer = load_model(tiny_teacher), load_tokenizer(tiny_teacher)
    seen = []

    def stop():
        seen.append(1)
        return len(seen) > 2  # stop before the third batch

    with pytest.raises(D.Stopped, match="48 of"):
        C.teacher_answers(teacher, tokenizer, "tiny-random-llama", 8, "cpu", lambda f, m: None, stop)
    partial = C.corpus_cache_path("tiny-random-llama", 8).with_suffix(".partial")
    assert len(partial.read_text().splitlines()) == 48
    assert C.answers_to_write("tiny-random-llama", 8) == len(C.load_prompts()) - 48  # the next run writes the rest


def test_a_first_run_says_up_front_how_many_teacher_answers_it_writes(tiny_teacher, data_dir):
    n = len(C.load_prompts())
    assert C.answers_to_write("tiny-random-llama", 8) == n
    said = []
    with pytest.raises(D.Stopped):  # stopped before the first batch: only the messages up front are seen
        distill_run.run_distill("tiny-random-llama", D.DistillSettings(**FAST), None, report=lambda f, m: said.append(m),
                                should_stop=lambda: True)
    assert said[0] == (f"first run with this teacher: it writes {n} teacher answers before training starts (once; "
                       "later runs reuse them)")
    assert f"teacher answers: 0/{n}" in said


def test_cancel_before_the_first_checkpoint_leaves_nothing(tiny_teacher, corpus_file, data_dir):
    with pytest.raises(D.Stopped):
        distill_run.run_distill("tiny-random-llama", D.DistillSettings(**FAST | {"steps": 20}), corpus_file,
                      should_stop=lambda: len(log.losses) >= 3, log=(log := D.TrainLog()))
    assert not any(saved_dirs.students_dir().rglob("*"))


def test_cancel_after_a_checkpoint_keeps_only_that_complete_checkpoint(tiny_teacher, corpus_file, data_dir):
    log = D.TrainLog()
    with pytest.raises(D.Stopped):
        distill_run.run_distill("tiny-random-llama", D.DistillSettings(**FAST | {"steps": 8}), corpus_file,
                      should_stop=lambda: len(log.losses) >= 5, log=log)
    (run,) = saved_dirs.students_dir().iterdir()
    assert [p.name for p in run.iterdir()] == ["step-000004"]  # checkpoints at 4 and 8: the one at 4 is complete
    (saved,) = saved_dirs.saved_students()
    assert saved.facts["complete"] is False and "stopped at step 4 of 8" in saved.label


@pytest.mark.parametrize("content, message", [("", "is empty"), ("   \n\n  ", "is empty")])
def test_empty_corpus_is_refused_before_anything_is_written(content, message, tiny_teacher, tmp_path, data_dir):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        distill_run.run_distill("tiny-random-llama", D.DistillSettings(**FAST), path)
    assert not saved_dirs.students_dir().exists()


@pytest.mark.parametrize("kwargs, message", [({"steps": 0}, "steps and batch_size must be positive"),
                                             ({"student_layers": 0}, "at least 1 layer"),
                                             ({"kd_weight": 1.5}, "share between 0 and 1"),
                                             ({"temperature": 0}, "temperature must be positive")])
def test_settings_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        D.DistillSettings(**kwargs)


# ---------------------------------------------------------------- speculative decoding


def test_speculative_output_equals_plain_greedy_and_counts_add_up(tiny_teacher, tiny, tmp_path):
    teacher, tokenizer = tiny
    draft_dir = D.save_checkpoint(D.make_student(teacher, [1]), tokenizer, tmp_path / "run", 1, {})
    result = speculative.run_speculate("tiny-random-llama", str(draft_dir), draft_tokens=3, max_new_tokens=12,
                                       prompts=speculative.bundled_prompts()[:3])
    assert result.identical_output is True
    for row in result.prompts:
        assert row["identical"] and row["text"] == row["assisted_text"]
        assert row["accepted"] <= row["drafted"] and row["accepted"] + row["target_passes"] == row["tokens"]
    assert 0 <= result.acceptance_rate <= 1 and result.speedup > 0


def test_the_model_as_its_own_draft_is_always_accepted(tiny_teacher):
    result = speculative.run_speculate("tiny-random-llama", str(tiny_teacher), draft_tokens=3, max_new_tokens=12,
                                       prompts=speculative.bundled_prompts()[:2])
    # draft (one token at a time) and verifier (a block at once) sum in different orders: allow a rare
    # near-tie flip; a real verification bug rejects far more than one draft in ten
    assert result.acceptance_rate >= 0.9 and result.tokens_per_pass > 3


def test_a_draft_with_another_tokenizer_is_refused(tiny_teacher, tiny, tmp_path):
    teacher, _ = tiny
    tokenizer = load_tokenizer(tiny_teacher)  # a copy: the shared fixture's tokenizer stays as it is
    other = tmp_path / "other"
    teacher.save_pretrained(other)
    tokenizer.add_tokens(["<lab-extra>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(ValueError, match="different tokenizer"):
        speculative.run_speculate("tiny-random-llama", str(other), max_new_tokens=4)


def test_saved_results_survive_a_torn_line(data_dir):
    speculative.results_path().parent.mkdir(parents=True)
    speculative.results_path().write_text('{"model": "a"}\n{"model": "b"\n')
    assert speculative.saved_results() == [{"model": "a"}]


def test_the_three_models_are_measured_with_the_settings_given(tiny_teacher, corpus_file, data_dir):
    """measure_with (a lesson's quick pass) sets the timed runs and quality samples; None measures fully."""
    from core.experiments.sweep import SweepSettings
    from core.store import ResultStore

    result = distill_run.run_distill("tiny-random-llama", D.DistillSettings(**FAST), corpus_file)
    quick = SweepSettings(new_tokens=4, repeats=1, mc_max_items=3, ppl_max_tokens=64)
    records = distill_run.measure(result, ResultStore(), 1.0, measure_with=quick)
    for record in records.values():
        assert len(record.decode_tokens_per_s_samples) == 1 and record.mc_items == 3
        assert record.usd_per_hour == 1.0 and record.settings["launched_from"] == "cli"


# ---------------------------------------------------------------- healing on a budget of minutes


def test_training_only_the_last_layers_freezes_the_others(tiny):
    model = D.make_student(tiny[0], [0, 1])
    trained = {id(p) for p in D.trainable_parameters(model, False, last_layers=1)}
    first, last = model.model.layers
    assert not any(id(p) in trained for p in first.parameters()) and not any(p.requires_grad for p in first.parameters())
    assert all(id(p) in trained for p in last.parameters())
    assert all(id(p) in trained for p in model.model.norm.parameters())
    assert id(model.get_input_embeddings().weight) not in trained
    assert len(D.trainable_parameters(model, False)) > len(trained)  # 0: every layer


def test_a_budget_in_minutes_follows_the_clock_and_ends_with_a_checkpoint(tiny_teacher, corpus_file, data_dir,
                                                                          monkeypatch):
    now = [0.0]
    monkeypatch.setattr(D.time, "perf_counter", lambda: now.__setitem__(0, now[0] + 1.5) or now[0])  # 1.5 s per read
    settings = D.DistillSettings(**(FAST | dict(budget_minutes=1, steps=1, checkpoints=3)))
    log = D.TrainLog()
    result = distill_run.run_distill("tiny-random-llama", settings, corpus_file, log=log)
    assert len(result.losses) > settings.steps  # the budget, not `steps`, decided when to stop
    minutes = [p.train_minutes for p in result.heal_curve]
    assert minutes[0] == 0 and minutes == sorted(minutes) and 1 <= minutes[-1] < 1.2
    assert len(result.heal_curve) == 1 + 3 and result.heal_curve[-1].heldout_kld_nats == result.heldout_kld_distilled
    assert json.loads((D.Path(result.student_path) / "lab_student.json").read_text())["complete"] is True


@pytest.mark.parametrize("kwargs,message", [(dict(budget_minutes=0.5), "at least 1 minute"),
                                            (dict(student_layers=3, train_last_layers=4), "between 0 \\(all\\)"),
                                            (dict(mixed_precision="fp8"), "'auto' or 'off'")])
def test_bad_healing_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        D.DistillSettings(**kwargs)


def test_wikitext_marks_are_undone_and_its_headings_dropped(tiny_teacher, tmp_path):
    raw = tmp_path / "wiki.txt"
    raw.write_text(" = Boulter = \n\n He starred in 2 @,@ 000 plays , a guest @-@ starring role ( once ) . It 's done . \n\n"
                   " = = Career = = \n\n Another paragraph with do n't and a 3 @.@ 5 score . \n"
                   + "".join(f"\n\n Paragraph {i} , long enough to train on , " + "more words " * 20 for i in range(4)))
    assert C.untokenize_wikitext(raw.read_text()).split("\n\n")[1].strip() == \
        "He starred in 2,000 plays, a guest-starring role (once). It's done."
    corpus = C.corpus_from_file(raw, load_tokenizer(tiny_teacher), 0.1)
    tokenizer = load_tokenizer(tiny_teacher)
    texts = [tokenizer.decode(s) for s in corpus.train + corpus.heldout]
    assert not any("@" in t or " = " in t for t in texts) and any("don't" in t and "3.5" in t for t in texts)


def test_a_text_and_the_teachers_answers_train_together(tiny_teacher, corpus_file, data_dir):
    said = []
    result = distill_run.run_distill("tiny-random-llama", D.DistillSettings(**FAST, answers_with_text=True), corpus_file,
                                     report=lambda f, m: said.append(m))
    alone = C.corpus_from_file(corpus_file, load_tokenizer(tiny_teacher), 0.1)
    assert result.train_tokens > alone.train_tokens and result.heldout_tokens > alone.heldout_tokens
    assert corpus_file.name in result.corpus and "teacher's answers" in result.corpus
    assert any("teacher answers" in m for m in said)  # the answers were written for this run


def test_with_answers_needs_a_corpus_on_the_command_line(data_dir, capsys):
    from core.cli import main
    assert main(["distill", "--teacher", "tiny-random-llama", "--with-answers"]) == 2
    assert "give --corpus too" in capsys.readouterr().err


@pytest.mark.parametrize("flags,setting,expected", [({"avx2", "avx512_bf16"}, "auto", True), ({"amx_bf16"}, "auto", True),
                                                    ({"avx2", "fma"}, "auto", False),
                                                    ({"avx512_bf16"}, "off", False)])
def test_bf16_steps_only_where_the_cpu_multiplies_bf16_natively(flags, setting, expected, monkeypatch):
    from core.measure.cpu import CpuFacts

    monkeypatch.setattr(D, "this_cpu", lambda: CpuFacts("test", "GenuineIntel", "6", "143", "8", frozenset(flags), "x86_64"))
    assert D.bf16_steps(D.DistillSettings(mixed_precision=setting), "cpu") is expected


def test_a_bf16_step_trains_float32_weights_and_lowers_the_loss(tiny):
    teacher, _ = tiny
    student = D.make_student(teacher, [0])
    batch = torch.randint(0, 200, (4, 32), generator=torch.Generator().manual_seed(0))
    params = D.trainable_parameters(student, train_embeddings=False)
    optimizer, log = torch.optim.AdamW(params, lr=3e-3), D.TrainLog()
    for _ in range(20):
        D._train_step(student, teacher, batch, params, optimizer, 3e-3, D.DistillSettings(), "cpu", log, bf16=True)
    assert all(p.dtype == torch.float32 for p in student.parameters())  # autocast: the master weights stay float32
    assert log.losses[-1] < 0.7 * log.losses[0]
