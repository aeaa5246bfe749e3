"""Does skipping zeroed neurons make decoding faster on this CPU? Dense fp32 against activation sparsity's two
decode paths at several targets, on the bundled model.

"masked" zeroes the small activations but multiplies by every weight (what a dense kernel does); "gather" reads
only the surviving neurons' rows of up_proj and down_proj. Rounds alternate dense, masked, gather at every target,
so a VM's drift hits all of them alike; each cell is the median over rounds of greedy decode tokens/s.

    flock /tmp/lab-heavy.lock .venv/bin/python benchmarks/sparsity_decode.py --targets 10,25,40,50,65 --rounds 5

Prints the CPU, then one line per target: tokens/s of each path, gather / dense, the share of zeros decoding saw
and the share of MLP weights the gather path read. FASTER_FROM_PCT in core/techniques/sparsity.py and the words of each variant follow it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import models, runtimes  # noqa: E402
from core.measure import benchmark  # noqa: E402
from core.techniques import sparsity as S  # noqa: E402

PROMPT = "The history of the printing press begins"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def set_thresholds(model: torch.nn.Module, thresholds: S.Thresholds, path: S.DecodePath) -> None:
    for layer, t, share in zip(S.sparse_layers(model), thresholds.threshold, thresholds.calibration_sparsity):
        layer.threshold.fill_(t)
        layer.threshold_value, layer.calibration_sparsity, layer.decode_path = t, share, path
        layer.counts, layer.kept_neurons = {"gather": 0, "masked": 0}, 0


def tokens_per_s(model, ids: torch.Tensor, new_tokens: int) -> float:
    return benchmark.timed_generation(runtimes.as_runner(model), ids, new_tokens).decode_tokens_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="10,25,40,50,65", help="comma-separated target sparsities in percent")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=33)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    targets = [int(t) for t in args.targets.split(",")]
    checkpoint = models.prepare(models.BUNDLED["smollm2-135m-instruct"])
    ids = models.load_tokenizer(checkpoint)(PROMPT, return_tensors="pt")["input_ids"]
    dense = models.load_model(checkpoint)
    sparse = S.load_sparse(checkpoint, S.SparsityConfig(targets[0]))
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {args.threads} threads; {args.rounds} rounds of "
          f"{args.new_tokens} new tokens after a {ids.shape[1]}-token prompt")
    print(f"{'target':>6} {'dense tok/s':>11} {'masked':>8} {'gather':>8} {'gather/dense':>12} {'zeros seen':>10} "
          f"{'MLP read':>8}")
    for pct in targets:
        thresholds = S.layer_thresholds(checkpoint, S.SparsityConfig(pct), dense)
        speeds: dict[str, list[float]] = {"dense": [], "masked": [], "gather": []}
        tokens_per_s(dense, ids, 4)  # warm-up
        for _ in range(args.rounds):
            speeds["dense"].append(tokens_per_s(dense, ids, args.new_tokens))
            for path in ("masked", "gather"):
                set_thresholds(sparse, thresholds, path)
                speeds[path].append(tokens_per_s(sparse, ids, args.new_tokens))
        med = {k: statistics.median(v) for k, v in speeds.items()}
        facts = S.variant_facts(sparse)  # the last gather run's
        print(f"{pct:>5}% {med['dense']:>11.1f} {med['masked']:>8.1f} {med['gather']:>8.1f} "
              f"{med['gather'] / med['dense']:>11.2f}x {facts['sparsity_decode_pct_mean']:>9.1f}% "
              f"{facts['mlp_weights_read_pct']:>7.0f}%", flush=True)


if __name__ == "__main__":
    main()
