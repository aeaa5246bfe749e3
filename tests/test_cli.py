import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from core import cli
from core.__main__ import main
from core.store.records import REQUIRED_FIELDS

FAST = ["--new-tokens", "4", "--repeats", "2", "--warmup", "1", "--mc-max-items", "5"]


def test_sweep_writes_one_record_per_variant(tmp_path, capsys):
    out = tmp_path / "out.json"
    code = main(["sweep", "--model", "tiny-random-llama", "--techniques", "fp32,nf4", "--json", str(out), *FAST])
    assert code == 0
    records = json.loads(out.read_text())
    assert [r["technique"] for r in records] == ["fp32", "nf4"]
    for r in records:
        missing = [f for f in REQUIRED_FIELDS if f not in r]
        assert not missing
        assert len(r["mc_accuracy_ci95"]) == 2
        assert "busy_machine" in r["settings"]  # no worker, no gate: other processes were measured all the same
        assert r["settings"]["timed_runs_measured"] >= 2 and "other_processes_cpu_pct_max" in r["settings"]
    assert records[0]["kld_mean"] == 0 and records[0]["top1_agreement"] == 1
    assert "sweep wall time" in capsys.readouterr().err


def test_models_lists_the_bundled_model(capsys):
    assert main(["models"]) == 0
    rows = json.loads(capsys.readouterr().out)
    keys = {r["key"] for r in rows}
    assert "smollm2-135m-instruct" in keys and "gemma3-270m" in keys


@pytest.mark.parametrize("args,message", [
    (["sweep", "--techniques", "fp32,int3"], "Unknown technique 'int3'"),
    (["sweep", "--techniques", "fp32", "--eval-set", "/no/such.jsonl"], "--eval-set: no such file"),
    (["sweep", "--techniques", "fp32", "--model", "not a model"], "Unknown model"),
    (["sweep", "--techniques", "fp32", "--new-tokens", "1"], "new_tokens"),
    (["sweep", "--techniques", "fp32", "--json", "/no/such/dir/out.json"], "folder"),
])
def test_bad_arguments_exit_nonzero_with_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("error:")


def test_cli_runs_as_a_module_and_fails_cleanly():
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "core", "sweep", "--techniques", "bogus"],
                          capture_output=True, text=True, cwd=repo)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "Unknown technique 'bogus'" in proc.stderr



COMMANDS = ["models", "prepare", "sweep", "moe", "lora", "finetune", "distill", "speculate", "depth", "prompt-lookup",
            "worker", "serve", "serve-bench", "serve-check", "serve-context", "serve-memory", "bill", "cascade",
            "model-cascade", "gguf-draft", "budget", "task"]


def _commands(add_parsers) -> list[str]:
    sub = argparse.ArgumentParser().add_subparsers()
    add_parsers(sub)
    return list(sub.choices)


def test_every_command_module_is_listed_once_and_adds_only_its_own_commands():
    """A command lives in one module of core/cli/, which adds its parsers; COMMANDS lists each module once, so a new
    module that is not listed fails here, and no two modules add the same command."""
    folder = Path(cli.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__", "common", "interrupt"}  # helpers, not commands
    listed = [m.__name__.rsplit(".", 1)[1] for m in cli.COMMANDS]
    assert sorted(listed) == sorted(modules) and len(set(listed)) == len(listed)
    added = [name for m in cli.COMMANDS for name in _commands(m.add_parsers)]
    assert added == COMMANDS  # each once, in the order --help lists them
    top = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(top.choices) == COMMANDS

@pytest.mark.parametrize("techniques", ["gguf-q4_k_x", "fp32,gguf-q4_k_m"])
def test_gguf_sweep_refused_before_anything_is_written(techniques, data_dir, monkeypatch, capsys):
    """An unknown quant type, or a GGUF variant where llama.cpp is not installed: one line, no file, no row."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    assert main(["sweep", "--model", "tiny-random-llama", "--techniques", techniques, *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("Unknown technique" in err[0] or "llama.cpp is not installed" in err[0])
    assert not (data_dir / "gguf").exists() and not (data_dir / "results.sqlite").exists()
