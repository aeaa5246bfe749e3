"""Benchmark on an NVIDIA GPU: decode speed, bytes held and GPU memory of each quantization variant.

    python benchmarks/gpu_bench.py --json gpu_bench.json

The weights are random, in the exact shape of SmolLM2-135M (30 layers, hidden 576, vocabulary 49,152):
single-stream decode speed depends on the shapes and data types, not on the values, so these are real
speed and memory numbers for that architecture; quality numbers need the real weights and are not made.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import techniques  # noqa: E402
from core.measure import benchmark
from core.runtimes import as_runner


def smollm2_shaped(target: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1,
                         eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--techniques", default="fp32,fp16,bf16,int8,nf4,fp4,nf4-dq")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible: this benchmark is for the GPU paths")
    device = "cuda"
    bandwidth = benchmark.measure_bandwidth_gb_s(size_mb=2048, device=device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = smollm2_shaped(Path(tmp) / "smollm2-shaped")
        prompt = torch.randint(3, 49152, (1, 32), generator=torch.Generator().manual_seed(1)).to(device)
        for key in techniques.parse_keys(args.techniques):
            technique = techniques.get(key)
            if reason := technique.why_not(device):
                print(f"{key}: skipped ({reason})", flush=True)
                continue
            benchmark.release_memory()
            with benchmark.PeakMemory(device) as mem:
                model = technique.make(checkpoint, device)
                bench = benchmark.bench_generation(as_runner(model, device), prompt, args.new_tokens, warmup=2, repeats=7, device=device)
            held = benchmark.bytes_held(model)
            roof = benchmark.roofline_tokens_per_s(max(bandwidth.samples), held)
            tps = bench.decode_tokens_per_s
            row = {"technique": key, "decode_tokens_per_s_median": tps.median, "p10": tps.p10, "p90": tps.p90,
                   "ttft_ms_median": bench.ttft_ms.median, "size_mb": held / 1e6,
                   "gpu_peak_allocated_mb": mem.delta_bytes / 1e6, "roofline_tokens_per_s": roof,
                   "roofline_pct": 100 * tps.median / roof}
            rows.append(row)
            print(json.dumps(row), flush=True)
            del model
    env = benchmark.environment(device, torch.get_num_threads())
    out = {"device": env.device_label, "hardware": env.hardware, "versions": dict(env.versions),
           "bandwidth_gb_s_samples": list(bandwidth.samples), "new_tokens": args.new_tokens,
           "weights": "random, SmolLM2-135M shape (speed and memory only)", "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
