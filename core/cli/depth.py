"""`python -m core depth`: each decoder layer's measured redundancy on the calibration text, and the layers a student
of each depth keeps when chosen by it, beside today's even spread. Nothing is pruned or measured here yet.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from core import models
from core.cli.common import int_list, json_folder, write_json
from core import techniques
from core.techniques import depth, distillation


def cmd_depth(args: argparse.Namespace) -> None:
    """The scores (cached after the first run) and, for each --keep N, the kept layers by redundancy and by spread."""
    keeps = int_list("--keep", args.keep)
    json_folder(args.json)
    spec = models.resolve(args.model)
    checkpoint = models.prepare(spec)
    layers = len(distillation.decoder_layers(distillation.meta_model(checkpoint)))
    for n in keeps:  # refuse a bad depth before the model runs
        depth.check_depth(layers, n)
    scores = depth.layer_scores(checkpoint, args.tokens)
    print(f"{spec.key}: {layers} decoder layers; block influence (1 - mean cosine of each layer's input and output) "
          f"on {scores.calibration_tokens} tokens of {depth.CALIBRATION_TEXT.name}, sha256 "
          f"{scores.calibration_sha256[:12]}; lower = more redundant")
    print(f"{'layer':>5}  {'influence':>9}  rank (1 = most redundant)")
    rank = {layer: r + 1 for r, layer in enumerate(scores.most_redundant_first())}
    for i, s in enumerate(scores.influence):
        print(f"{i:>5}  {s:>9.4f}  {rank[i]}")
    rows = [{"keep": n, "redundancy": distillation.pick_layers(layers, n, "redundancy", scores.influence),
             "spread": distillation.pick_layers(layers, n, "spread")} for n in keeps]
    for row in rows:
        print(f"keep {row['keep']}: by redundancy {_span(row['redundancy'])}; spread {_span(row['spread'])}")
    keys = [techniques.REFERENCE] + [depth.prune_key(n, c) for n in keeps for c in depth.PRUNE_CHOICES]
    print(f"measure them (KL divergence, accuracy, decode speed): python -m core sweep --model {spec.key} "
          f"--techniques {','.join(keys)}")
    if args.json:
        write_json(args.json, {"model": spec.key, "scores": asdict(scores), "kept": rows})


def _span(kept: list[int]) -> str:
    return ",".join(map(str, kept))


def add_parsers(sub) -> None:
    """Registers `depth` on `sub` (argparse's subparsers)."""
    d = sub.add_parser("depth", help="score each decoder layer's redundancy on the calibration text and show which "
                       "layers a student of each depth keeps, by redundancy and evenly spread")
    d.add_argument("--model", default=models.DEFAULT_MODEL)
    d.add_argument("--keep", default="10,15,20", help="comma-separated student depths, each between 1 and layers - 1")
    d.add_argument("--tokens", type=int, default=depth.CALIBRATION_TOKENS,
                   help="calibration tokens to score on (the scores are cached per model, text and token count)")
    d.add_argument("--json", help="also write the scores and the kept layers here as JSON")
    d.set_defaults(func=cmd_depth)
