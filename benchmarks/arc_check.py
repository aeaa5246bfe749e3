"""Check: raw and length-normalised multiple-choice accuracy on public ARC-Easy test items, fp32.

    .venv/bin/python benchmarks/arc_check.py                  # the first 300 items, bundled model
    .venv/bin/python benchmarks/arc_check.py --items 2376     # the whole test split

Scores every item the way the sweep does (core.measure.evaluate.mc_accuracy: prompt "Question: ...\\nAnswer:",
continuation " " + choice) and prints raw accuracy, acc_norm (log-prob / characters of the choice, as
lm-evaluation-harness) and, for comparison, the per-byte-with-delimiter normalisation this project used
before, so a change in either is visible. Reads ../shared/data/ARC-Easy-Test.jsonl unless --file is given.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core import models  # noqa: E402
from core.measure import evaluate
from core.runtimes import eager

DEFAULT_FILE = ROOT.parent / "shared" / "data" / "ARC-Easy-Test.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--items", type=int, default=300)
    args = parser.parse_args()
    if not args.file.is_file():
        sys.exit(f"ARC-Easy file {args.file} is absent; pass --file PATH to an ARC jsonl (original AI2 layout).")
    items = evaluate.load_arc_jsonl(args.file, limit=args.items)
    models.quiet_library_output()
    spec = models.resolve(args.model)
    checkpoint = models.prepare(spec)
    model, tokenizer = models.load_model(checkpoint), models.load_tokenizer(checkpoint)
    t0 = time.perf_counter()
    scores: list[list[float]] = []
    for start in range(0, len(items), 16):  # the batches mc_accuracy uses
        scores += eager.batch_choice_logprobs(model, tokenizer, items[start : start + 16])
    seconds = time.perf_counter() - t0
    picks = [evaluate.mc_picks(s, it.choices) for s, it in zip(scores, items)]  # what mc_accuracy records
    raw = [p[0] == it.answer for p, it in zip(picks, items)]
    norm = [p[1] == it.answer for p, it in zip(picks, items)]
    # the earlier normalisation, on the same scores: per UTF-8 byte of " " + choice
    per_byte = [max(range(len(s)), key=lambda j: s[j] / len((" " + it.choices[j]).encode())) == it.answer
                for s, it in zip(scores, items)]
    lo, hi = evaluate.bootstrap_ci(raw)
    n = len(items)
    print(f"model {args.model} fp32, first {n} ARC-Easy test items of {args.file.name}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}, scored in {seconds:.1f} s")
    print(f"raw accuracy                                 {sum(raw) / n:.3f}  (95% CI {lo:.3f}-{hi:.3f})")
    print(f"acc_norm = log-prob / len(choice), as lm-eval {sum(norm) / n:.3f}")
    print(f"earlier: log-prob / bytes(' ' + choice)      {sum(per_byte) / n:.3f}")
    print(f"items where the two normalised picks differ  {sum(a != b for a, b in zip(norm, per_byte))}")

if __name__ == "__main__":
    main()
