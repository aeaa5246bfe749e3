"""`python -m core bill`: the Decide page's bills from the results store, as a table or JSON."""

import json

import pytest

from core.__main__ import main
from core.measure import benchmark, bill
from core.store import ResultStore
from tests.factories import make_record, make_serving_record

HERE = benchmark.hardware_fingerprint("cpu")
ARGS = ["bill", "--model", "smollm2-135m-instruct", "--machine", HERE, "--requests-per-day", "10000",
        "--answer-tokens", "200", "--usd-per-hour", "1.5"]


def _seed() -> ResultStore:
    store = ResultStore()
    store.add(make_record(hardware=HERE, decode_tokens_per_s_median=20.0, ttft_ms_median=500.0))
    store.add(make_record(hardware=HERE, technique="nf4", label="NF4"))
    store.add_serving(make_serving_record(technique="nf4", hardware=HERE, concurrency=4,
                                          per_user_tokens_per_s_median=15.0))
    return store


def test_bill_json_is_the_one_cost_model(capsys):
    _seed()
    assert main([*ARGS, "--json"]) == 0
    rows = {r["technique"]: r for r in json.loads(capsys.readouterr().out)}
    # fp32, one at a time: 1 / (0.5 + 200 / 20) req/s; 0.2315 req/s at peak -> 3 machines x 720 h x $1.50
    assert rows["fp32"]["machines"] == 3 and rows["fp32"]["$ per month (always on)"] == pytest.approx(3240.0)
    assert rows["fp32"]["$ per month (busy only)"] == pytest.approx(875 * 1.5)
    assert rows["fp32"]["source"].startswith("one request at a time")
    assert rows["nf4"]["source"].startswith("load benchmark, 4 concurrent") and rows["nf4"]["concurrency"] == 4


def test_bill_table_names_the_formula_and_the_billing(capsys):
    _seed()
    assert main([*ARGS, "--billing", "busy-only"]) == 0
    out = capsys.readouterr().out
    assert bill.FORMULA in out and "billed busy only" in out
    assert "1,312.50" in out  # fp32's busy-only bill: 875 busy hours x $1.50


def test_bill_with_nothing_measured_says_what_to_do(capsys):
    assert main([*ARGS]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: nothing measured") and "sweep" in err and "Traceback" not in err
    _seed()
    assert main([*ARGS, "--peak-to-average", "0.5"]) == 2
    assert "peak_to_average" in capsys.readouterr().err
