"""`python -m core bill`: machines, busy hours and the monthly bill per measured variant for a traffic profile, from
the results store: the Decide page's bills, as a table or JSON rows.
"""

from __future__ import annotations

import argparse

from core import models
from core.cli.common import CliError, json_folder, write_json
from core.measure import benchmark, bill, cost
from core.store import open_store
from core.views import capacity


def bill_text(bills: list[bill.VariantBill]) -> str:
    """The bill table in plain text, one variant a line: the same numbers as Decide's tabs."""
    head = f"{'variant':<28} {'machines':>8} {'req/s/machine':>13} {'busy h/machine':>14} {'$/month':>10} {'interval':>21}  source"
    lines = [head]
    for b in bills:
        x, (low, high) = b.bill, b.bill.usd_per_month_range
        lines.append(f"{b.label[:28]:<28} {x.machines:>8} {x.requests_per_s_per_machine:>13.3f} "
                     f"{x.busy_hours_per_machine_per_month:>14.1f} {x.usd_per_month:>10,.2f} "
                     f"{f'{low:,.2f}-{high:,.2f}':>21}  {b.source}{'' if b.meets_target else ' (misses the target)'}")
    return "\n".join(lines)


def cmd_bill(args: argparse.Namespace) -> None:
    """One bill per measured variant of a model on one machine, from the results store (the Decide page's bills)."""
    spec = models.resolve(args.model)
    store = open_store(args.store_url)
    machine = args.machine or benchmark.hardware_fingerprint(benchmark.pick_device("auto"))
    records = store.latest_per_technique(spec.key, machine)
    if not records:
        seen = store.hardware_seen(spec.key)
        raise CliError(f"nothing measured for {spec.key} on {machine!r}; "
                       + (f"--machine one of {seen}" if seen else "run `python -m core sweep` first"))
    price = args.usd_per_hour if args.usd_per_hour is not None else cost.get_preset(args.hardware).usd_per_hour
    traffic = bill.Traffic(args.requests_per_day, args.answer_tokens, args.prompt_tokens, args.peak_to_average,
                           args.peak_requests_per_s)
    target = bill.LatencyTarget(args.max_ttft_ms_p90, args.min_user_tokens_per_s)
    billing = args.billing.replace("-", "_")
    bills = bill.variant_bills(records, capacity.latest_points(store.serving(spec.key, machine)), traffic, price,
                               billing, target)
    if args.json is None:
        print(f"{spec.key} on {machine}: {traffic.requests_per_day:,.0f} requests a day, {traffic.answer_tokens}-token "
              f"answers, peak {traffic.peak_rps:.3f} requests/s, ${price:.4f}/h, billed {bill.BILLING_WORDS[billing]}")
        print(f"{bill.FORMULA}; machines = max(1, ceil(peak / that), ceil(busy hours / {bill.HOURS_PER_MONTH}))")
        print(bill_text(bills))
        return
    json_folder(None if args.json == "-" else args.json)
    write_json(None if args.json == "-" else args.json, bill.bill_rows(bills))


def add_parsers(sub) -> None:
    """Registers `bill` on `sub` (argparse's subparsers)."""
    b = sub.add_parser("bill", help="machines, busy hours and the monthly bill per measured variant for a traffic "
                       "profile, from the results store (the Decide page's numbers)")
    b.add_argument("--model", default=models.DEFAULT_MODEL)
    b.add_argument("--machine", help="hardware fingerprint the results were measured on (default: this machine)")
    b.add_argument("--requests-per-day", type=float, required=True)
    b.add_argument("--answer-tokens", type=int, default=200, help="typical answer length")
    b.add_argument("--prompt-tokens", type=int, default=128, help="typical prompt length (picks the load points)")
    b.add_argument("--peak-to-average", type=float, default=bill.PEAK_TO_AVERAGE,
                   help="busiest hour vs the day's average")
    b.add_argument("--peak-requests-per-s", type=float, help="the peak itself, instead of --peak-to-average")
    b.add_argument("--max-ttft-ms-p90", type=float, help="latency target: p90 time to first token at most")
    b.add_argument("--min-user-tokens-per-s", type=float, help="latency target: each user gets at least")
    b.add_argument("--hardware", choices=list(cost.HARDWARE_PRESETS), default="laptop-cpu", help="price preset")
    b.add_argument("--usd-per-hour", type=float, help="override the preset's price")
    b.add_argument("--billing", choices=[k.replace("_", "-") for k in bill.BILLINGS], default="always-on",
                   help="the headline bill: always on (live traffic) or busy only (per-second billing, scale to zero)")
    b.add_argument("--json", nargs="?", const="-", help="JSON rows instead of the table: to this file, or stdout")
    b.set_defaults(func=cmd_bill)
