"""`python -m core models` and `prepare`: the models the lab can use, and the one-time conversion of a bundled one."""

from __future__ import annotations

import argparse
import json
import sys

from core import models


def cmd_models(_: argparse.Namespace) -> None:
    rows = [
        {"key": s.key, "label": s.label, "source": s.source, "available": models.is_available(s),
         "prepared": models.checkpoint_ready(s.key), "weights_note": s.weights_note,
         "license_note": s.license_note, "install_hint": "" if models.is_available(s) else s.install_hint,
         "for_tests": s.for_tests}
        for s in models.BUNDLED.values()
    ]
    print(json.dumps(rows, indent=2))


def cmd_prepare(args: argparse.Namespace) -> None:
    spec = models.resolve(args.model)
    path = models.prepare(spec, progress=lambda msg: print(msg, file=sys.stderr))
    print(json.dumps({"model": spec.key, "checkpoint": str(path), "weights_note": spec.weights_note}))


def add_parsers(sub) -> None:
    """Registers `models` and `prepare` on `sub` (argparse's subparsers)."""
    sub.add_parser("models", help="list the models the lab can use").set_defaults(func=cmd_models)
    p = sub.add_parser("prepare", help="convert a bundled model to a safetensors checkpoint (once)")
    p.add_argument("--model", default=models.DEFAULT_MODEL)
    p.set_defaults(func=cmd_prepare)
