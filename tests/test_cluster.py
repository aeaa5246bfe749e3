"""Sweeps on a real local Ray cluster into a real PostgreSQL, and two sweeping processes sharing one store."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

# Ray then takes 127.0.0.1 as this node's address, so every port it opens is on loopback only.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from core.__main__ import main  # noqa: E402
from core.experiments.sweep import SweepSettings  # noqa: E402
from core.launch import cluster  # noqa: E402
from core.measure import benchmark
from core.store import ResultStore  # noqa: E402
from core.store.records import REQUIRED_FIELDS  # noqa: E402

FAST = dict(new_tokens=4, repeats=1, warmup_runs=0, mc_max_items=3, ppl_window_tokens=32, ppl_max_tokens=64)
FAST_FLAGS = ["--new-tokens", "4", "--repeats", "1", "--warmup", "0", "--mc-max-items", "3"]
FOUR = ["fp32", "bf16", "fp16", "dyn-int8"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local Ray node per module: 2 CPUs, one benchmark slot, its own data dir (so checkpoints are shipped)."""
    ray = pytest.importorskip("ray")
    worker_data = tmp_path_factory.mktemp("worker-data")
    before = os.environ.get("LAB_DATA_DIR")
    os.environ["LAB_DATA_DIR"] = str(worker_data)  # the workers inherit the environment Ray starts with
    try:
        ray.init(address="local", num_cpus=2, resources={cluster.BENCH_RESOURCE: 1}, include_dashboard=False,
                 log_to_driver=False)  # "local": a new cluster of its own, never one already running here
    finally:
        if before is None:
            os.environ.pop("LAB_DATA_DIR", None)
        else:
            os.environ["LAB_DATA_DIR"] = before
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    yield worker_data
    ray.shutdown()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_no_overlap(records) -> None:
    spans = sorted((r.started_at, r.created_at) for r in records)
    assert all(start and start < end for start, end in spans)
    for (_, end), (next_start, _) in zip(spans, spans[1:]):
        assert end <= next_start, f"measurements overlapped: one ended {end}, the next began {next_start}"


@pytest.mark.ray
def test_four_tiny_variants_land_once_each_with_fingerprints_and_never_overlap(ray_cluster, pg_url, capsys,
                                                                             tmp_path):
    out = tmp_path / "out.json"
    code = main(["--store", pg_url, "sweep", "--ray", "auto", "--model", "tiny-random-llama",
                 "--techniques", ",".join(FOUR), "--devices", "cpu", "--json", str(out), *FAST_FLAGS])
    err = capsys.readouterr().err
    assert code == 0, err
    records = ResultStore.from_url(pg_url).all()
    assert sorted(r.technique for r in records) == sorted(FOUR)
    assert sorted(r["record_id"] for r in json.loads(out.read_text())) == sorted(r.record_id for r in records)
    assert len({r.record_id for r in records}) == 4 and len({r.run_id for r in records}) == 1
    assert {r.hardware for r in records} == {benchmark.hardware_fingerprint("cpu")}
    assert all(r.attempt == 1 and r.settings["cluster_node"].startswith("127.0.0.1") for r in records)
    for r in records:
        assert all(r.to_dict().get(f) is not None for f in REQUIRED_FIELDS)
    _assert_no_overlap(records)
    assert "[127.0.0.1 (" in err and "4 of 4 variants stored" in err  # progress per node
    # The checkpoint came through the object store into the worker's own data dir, not from a hub.
    assert (ray_cluster / "models" / "tiny-random-llama" / "config.json").is_file()


@pytest.mark.ray
def test_a_killed_worker_loses_only_its_variant_which_is_retried_once(ray_cluster, pg_url):
    store = ResultStore.from_url(pg_url)
    killed: list[str] = []

    def kill_first_worker(p) -> None:
        # The first variant to start is killed mid-measurement with SIGKILL, as a crash or OOM would.
        if p.step == "start" and p.pid and not killed:
            os.kill(p.pid, signal.SIGKILL)
            killed.append(p.variant)

    result = cluster.run_cluster_sweep(["tiny-random-llama"], FOUR, SweepSettings(**FAST), store, devices=["cpu"],
                                       progress=kill_first_worker)
    assert killed
    assert [o.status for o in result.outcomes] == ["stored"] * 4
    records = store.all()
    assert sorted(r.technique for r in records) == sorted(FOUR)  # every variant once: no duplicate row
    attempts = {r.technique: r.attempt for r in records}
    assert sorted(attempts.values()) == [1, 1, 1, 2]
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM results")).scalar() == 4
    _assert_no_overlap(records)


@pytest.mark.ray
def test_a_checkpoint_a_worker_cannot_reach_is_a_clear_error_and_writes_nothing(ray_cluster, pg_url, tmp_path):
    store = ResultStore.from_url(pg_url)
    missing = tmp_path / "on-a-share-the-workers-do-not-mount"
    with pytest.raises(cluster.ClusterError) as error:
        cluster.run_cluster_sweep([str(missing)], ["fp32"], SweepSettings(**FAST), store, devices=["cpu"])
    message = str(error.value)
    assert str(missing) in message and "127.0.0.1" in message and "nothing was measured or written" in message
    assert store.all() == []


@pytest.mark.ray
def test_an_unreachable_ray_address_is_a_clear_error_and_writes_nothing(pg_url, capsys):
    port = _closed_port()
    code = main(["--store", pg_url, "sweep", "--ray", f"ray://127.0.0.1:{port}", "--model", "tiny-random-llama",
                 "--techniques", "fp32", *FAST_FLAGS])
    err = capsys.readouterr().err
    assert code == 2
    assert f"Cannot reach the Ray cluster at ray://127.0.0.1:{port}" in err and "Nothing was measured" in err
    assert "Traceback" not in err
    assert ResultStore.from_url(pg_url).all() == []


def test_two_sweeping_processes_share_one_postgres_store(pg_url, tmp_path):
    procs = []
    for n in (1, 2):
        env = os.environ | {"LAB_DATA_DIR": str(tmp_path / f"data-{n}"), "LAB_STORE_URL": pg_url,
                            "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "core", "sweep", "--model", "tiny-random-llama", "--techniques", "fp32,bf16",
             "--threads", "1", "--json", str(tmp_path / f"out-{n}.json"), *FAST_FLAGS],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    written = [r for n in (1, 2) for r in json.loads((tmp_path / f"out-{n}.json").read_text())]
    stored = ResultStore.from_url(pg_url).all()
    assert len(written) == 4 and len({r["run_id"] for r in written}) == 2
    assert sorted(r.record_id for r in stored) == sorted(r["record_id"] for r in written)  # each exactly once
    by_id = {r["record_id"]: r for r in written}
    for record in stored:  # none partially written: every field as the sweep returned it
        assert json.dumps(record.to_dict(), sort_keys=True) == json.dumps(by_id[record.record_id], sort_keys=True)


@pytest.mark.ray
def test_every_job_kind_runs_on_ray_through_launch(ray_cluster, pg_url, data_dir):
    """Each registered kind, typed, through the one launch() call, as Ray tasks on the local head: the records land
    in the shared store, and a result a page reads from a JSONL file lands on the driver (here), not on the node."""
    from core.experiments import speculative
    from core.hybrids import classical, gguf_draft, model_cascade, prompt_lookup
    from core.launch import kinds
    from core.launch.job import Job
    from core.launch.launch import launch
    from core.serving.bench import ServeSettings
    from core.experiments.task_run import TaskSettings
    from core.serving.memory_bench import MemorySettings
    from core.techniques.distillation import DistillSettings
    from core.techniques.lora import FinetuneSettings

    store = ResultStore.from_url(pg_url)
    tiny = "tiny-random-llama"

    def on_ray(args, shared_store=store):
        return launch(Job(args), "ray", store=shared_store, address="auto")

    ran: dict[str, object] = {}
    ran["sweep"] = done = on_ray(kinds.SweepArgs(tiny, ("fp32",), SweepSettings(**FAST), devices=("cpu",)))
    assert [store.get(i).technique for i in done.record_ids] == ["fp32"]
    ran["moe"] = done = on_ray(kinds.MoeArgs(tiny, 8, (1,), dense_layers=0, settings=SweepSettings(**FAST)))
    assert len(done.record_ids) == 2 and all(store.get(i) is not None for i in done.record_ids)  # dense + top-1
    lora_settings = FinetuneSettings(steps=1, batch_size=2, eval_items=2, target_modules=("q_proj", "v_proj"))
    ran["lora"] = done = on_ray(kinds.LoraArgs(tiny, lora_settings, usd_per_hour=0.1))
    assert done.result["method"] == "lora" and len(done.record_ids) == 1 and store.get(done.record_ids[0]) is not None
    distill_settings = DistillSettings(student_layers=1, steps=2, batch_size=2, seq_len_tokens=32,
                                       corpus_answer_tokens=8, checkpoints=1, warmup_steps=1)
    ran["distill"] = done = on_ray(kinds.DistillArgs(tiny, distill_settings, usd_per_hour=0.1, mc_max_items=3))
    assert len(done.record_ids) == 3 and all(store.get(i) is not None for i in done.record_ids)
    student = done.result["student_path"]  # saved on the node: here the same disk
    ran["speculate"] = done = on_ray(kinds.SpeculateArgs(tiny, student, draft_tokens=2, max_new_tokens=4),
                                     shared_store=None)
    assert done.result["draft_tokens"] == 2
    # kept where the Distill page reads it (the driver's data dir), once, and not left behind on the node alone
    assert [r["draft_tokens"] for r in speculative.saved_results()] == [2]
    assert not (ray_cluster / "distill" / "speculative.jsonl").exists()
    serve = ServeSettings(concurrency=(1,), prompt_tokens=(16,), new_tokens=4, repeats=1, threads=1)
    ran["serve-bench"] = done = on_ray(kinds.ServeBenchArgs(tiny, ("fp32",), serve))
    assert len(done.record_ids) == 1 and done.result[0]["concurrency"] == 1
    assert {r.settings["cluster_node"][:9] for r in store.serving(model=tiny)} == {"127.0.0.1"}
    ran["serve-context"] = done = on_ray(kinds.ServeContextArgs(tiny, (16, 32), decode_tokens=2), shared_store=None)
    assert [p["context_tokens"] for p in done.result["points"]][:2] == [16, 32]
    ran["cascade"] = done = on_ray(kinds.CascadeArgs(classical.ClassicalSettings(model=tiny, second="fp32", shots=1)),
                                   shared_store=None)
    assert done.result["kind"] == "classical" and done.result["n_items"] == 100
    cascade = model_cascade.ModelCascadeSettings(model=tiny, first="bf16", second="fp32", task="mc", max_items=3)
    ran["model-cascade"] = done = on_ray(kinds.ModelCascadeArgs(cascade), shared_store=None)
    assert done.result["kind"] == "model" and done.result["n_items"] == 3
    assert len((data_dir / "hybrids" / "cascades.jsonl").read_text().splitlines()) == 2
    lookup = prompt_lookup.LookupSettings(runtimes=("transformers",), draft_tokens=2, new_tokens=4, repeats=1)
    ran["prompt-lookup"] = done = on_ray(kinds.PromptLookupArgs(tiny, lookup), shared_store=None)
    assert {r["prompt_set"] for r in done.result} == {"grounded", "open"}
    draft = gguf_draft.DraftSettings(target="gguf-q8_0", draft="gguf-q8_0", draft_max_tokens=(2,), new_tokens=4,
                                     repeats=1)
    ran["gguf-draft"] = done = on_ray(kinds.GGUFDraftArgs(tiny, draft), shared_store=None)
    assert [r["draft_max_tokens"] for r in done.result] == [2, 2] and all(r["identical_outputs"] for r in done.result)
    assert (data_dir / "hybrids" / "gguf_draft.jsonl").is_file()
    # the node builds the tiny model's sensitivity table (files from 58 to 188 kB) and refuses a 30 kB budget (above
    # the door's floor of 2 bits per parameter, so it gets that far) with the words a user reads; the whole search
    # on the bundled model is measured by `python -m core budget`
    with pytest.raises(ValueError, match="below the smallest file the candidate types make"):
        on_ray(kinds.BudgetArgs(tiny, (30_000,), imatrix=False), shared_store=None)
    assert list((ray_cluster / "gguf").glob("*/budget/sensitivity-plain-*.json"))
    assert not (ray_cluster / "gguf" / "budget_search.jsonl").exists()
    ran["budget"] = "refused on the node"
    ran["prepare"] = done = on_ray(kinds.PrepareArgs(tiny, gguf=False, teacher_answers=False), shared_store=None)
    assert done.state == "done" and set(done.result) <= {"model", "speed"}
    task = data_dir / "two.jsonl"
    task.write_text('{"prompt": "Say yes.", "contains": ["yes"]}\n{"prompt": "Say no.", "exact": "no"}\n')
    ran["task"] = done = on_ray(kinds.TaskArgs(tiny, TaskSettings(("fp32",), str(task), new_tokens=4)),
                                shared_store=None)
    assert done.state == "done"
    memory = MemorySettings(cache_types=("f16",), contexts=(128,), slots=(1,), kld_contexts=(), torch_contexts=())
    ran["serve-memory"] = done = on_ray(kinds.ServeMemoryArgs(tiny, ("gguf-q8_0",), memory), shared_store=None)
    assert done.state == "done"
    assert set(ran) == set(kinds.KINDS)  # every kind there is
    assert all(d.node.startswith("127.0.0.1") for d in ran.values() if getattr(d, "node", ""))


@pytest.mark.ray
def test_a_dashboard_sweep_on_ray_with_a_failing_variant_ends_failed_naming_it(ray_cluster, pg_url, monkeypatch):
    """The worker runs a queued sweep on the cluster when LAB_RAY_ADDRESS is set, through the same launch path as
    the CLI: a variant that fails there (a budget-searched GGUF file never made for this model) fails the job, by
    name, while the variant that worked is stored."""
    from core.launch import kinds, worker
    from core.launch.job import Job
    from core.launch.jobqueue import PRESENTER, JobQueue
    from core.launch.launch import submit

    monkeypatch.setenv("LAB_RAY_ADDRESS", "auto")
    monkeypatch.setenv("LAB_STORE_URL", pg_url)
    queue = JobQueue()
    args = kinds.SweepArgs("tiny-random-llama", ("fp32", "gguf-auto-1"), SweepSettings(**FAST))
    job_id = submit(queue, Job(args, "sweep on the cluster"), PRESENTER, "s-p")
    assert worker.run_job(queue, queue.claim(os.getpid())) == "failed"
    job = queue.job(job_id)
    assert job.state == "failed" and "gguf-auto-1 · cpu failed" in job.error and "no searched file" in job.error
    assert "fp32" not in job.error
    assert [r.technique for r in ResultStore.from_url(pg_url).all()] == ["fp32"]
