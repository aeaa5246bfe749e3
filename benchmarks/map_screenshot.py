"""Layout check: the Trade-off Map with ~30 variants of every family and runtime, screenshotted in headless Chromium.

    .venv/bin/python benchmarks/map_screenshot.py artifacts/tradeoff_map.png
    .venv/bin/python benchmarks/map_screenshot.py artifacts/real_map.png --data data   # a real store instead

The records are invented for layout only (spread like the ones measured on 2-core CPUs: one 0.6 tok/s
outlier, KL divergences from 0.0005 to 1.5 nats); they go to a throwaway data dir, never to data/.
The dashboard is served on 127.0.0.1 only and stopped afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (technique, label, family, runtime, tok/s, KLD nats, top-1, MB held)
VARIANTS = [
    ("fp32", "FP32 (reference)", "reference", "transformers", 20.0, 0.0, 1.0, 538),
    ("fp32-compiled", "FP32 compiled", "reference", "transformers-compiled", 27.0, 0.0, 1.0, 538),
    ("bf16", "BF16", "quantization", "transformers", 11.0, 0.0011, 0.995, 269),
    ("bf16-compiled", "BF16 compiled", "quantization", "transformers-compiled", 16.0, 0.0011, 0.995, 269),
    ("fp16", "FP16", "quantization", "transformers", 9.0, 0.0004, 0.998, 269),
    ("int8", "INT8 (bitsandbytes)", "quantization", "transformers", 0.6, 0.02, 0.97, 190),
    ("nf4", "NF4", "quantization", "transformers", 12.5, 0.29, 0.80, 150),
    ("fp4", "FP4", "quantization", "transformers", 12.0, 0.55, 0.72, 150),
    ("dyn-int8", "Dynamic INT8", "quantization", "transformers", 26.0, 0.05, 0.94, 250),
    ("hqq-4", "HQQ 4-bit", "quantization", "transformers", 7.0, 0.22, 0.83, 160),
    ("gguf-f16", "GGUF F16", "gguf", "llama.cpp", 45.0, 0.0005, 0.998, 270),
    ("gguf-q8_0", "GGUF Q8_0", "gguf", "llama.cpp", 60.0, 0.004, 0.985, 145),
    ("gguf-q6_k", "GGUF Q6_K", "gguf", "llama.cpp", 62.0, 0.012, 0.97, 138),
    ("gguf-q5_k_m", "GGUF Q5_K_M", "gguf", "llama.cpp", 66.0, 0.03, 0.95, 112),
    ("gguf-q4_k_m", "GGUF Q4_K_M", "gguf", "llama.cpp", 70.0, 0.09, 0.90, 105),
    ("gguf-q4_0", "GGUF Q4_0", "gguf", "llama.cpp", 74.0, 0.21, 0.85, 92),
    ("gguf-q3_k_m", "GGUF Q3_K_M", "gguf", "llama.cpp", 71.0, 0.42, 0.77, 88),
    ("gguf-q2_k", "GGUF Q2_K", "gguf", "llama.cpp", 69.0, 1.5, 0.55, 88),
    ("moe-8x1", "MoE 8 experts, k=1", "moe", "transformers", 24.0, 1.2, 0.58, 540),
    ("moe-8x2", "MoE 8 experts, k=2", "moe", "transformers", 22.0, 0.6, 0.70, 540),
    ("moe-8x4", "MoE 8 experts, k=4", "moe", "transformers", 19.0, 0.2, 0.84, 540),
    ("moe-4x2", "MoE 4 experts, k=2", "moe", "transformers", 21.0, 0.35, 0.79, 540),
    ("student-L20", "Student, 20 layers", "distillation", "transformers", 25.0, 0.35, 0.80, 440),
    ("student-L15", "Student, 15 layers", "distillation", "transformers", 31.0, 0.75, 0.66, 360),
    ("student-L10", "Student, 10 layers", "distillation", "transformers", 40.0, 1.3, 0.52, 280),
    ("student-L15-q4", "Student 15L, GGUF Q4_K_M", "gguf", "llama.cpp", 110.0, 0.9, 0.62, 80),
    ("lora-support-r8", "LoRA support routing r8", "lora", "transformers", 19.5, 0.08, 0.93, 540),
    ("lora-support-r16", "LoRA support routing r16", "lora", "transformers", 19.0, 0.11, 0.91, 545),
    ("lora-faq-r4", "LoRA FAQ r4", "lora", "transformers", 19.8, 0.05, 0.95, 539),
    ("lora-faq-r4-q8", "LoRA FAQ r4, GGUF Q8_0", "gguf", "llama.cpp", 58.0, 0.055, 0.945, 146),
]


def seed(data_dir: Path) -> None:
    os.environ["LAB_DATA_DIR"] = str(data_dir)
    from core.measure import benchmark
    from core.store import ResultStore
    from tests.factories import make_record

    here = benchmark.hardware_fingerprint("cpu")
    store = ResultStore()
    for key, label, family, runtime, tps, kld, top1, mb in VARIANTS:
        store.add(make_record(technique=key, label=label, family=family, runtime=runtime, hardware=here, size_mb=mb,
                              decode_tokens_per_s_median=tps, decode_tokens_per_s_p10=0.9 * tps,
                              decode_tokens_per_s_p90=1.08 * tps, kld_mean=kld, kld_p99=10 * kld, top1_agreement=top1,
                              perplexity=22.1 * (1 + kld), mc_accuracy=0.45 - kld / 10))


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default="artifacts/tradeoff_map.png", type=Path)
    parser.add_argument("--data", type=Path, help="serve this existing data dir instead of invented records")
    args = parser.parse_args()
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.data:
        data_dir = args.data.resolve()
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="map-shot-"))
        seed(data_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "ui.server", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false"], cwd=ROOT,
                            env=os.environ | {"LAB_DATA_DIR": str(data_dir)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1600, "height": 2900})
            page.goto(url, timeout=120_000)
            page.get_by_role("link", name="Trade-off Map").first.click(timeout=120_000)
            page.wait_for_selector(".js-plotly-plot", timeout=120_000)
            time.sleep(4)  # let plotly finish drawing every chart
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"{'store ' + str(data_dir) if args.data else f'{len(VARIANTS)} invented variants'}; screenshot {out}")


if __name__ == "__main__":
    main()
