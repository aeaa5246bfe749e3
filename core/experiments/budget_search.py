"""Fit a size budget with the least damage, and measure what was predicted.

For each budget: the recipe (core.techniques.gguf_budget), its file, and the file measured by llama.cpp's own
scoreboard (`llama-perplexity --kl-divergence` against the F32 export's log-probs, on the evaluation text) and
`llama-bench` decode speed, next to the llama.cpp presets measured the same way in the same run.

The estimate is checked first: a sample of files where one group (a kind of tensor in a third of the layers, or the
token table) drops from Q8_0 to a low type is measured on the calibration text, and the estimate's rank order is
compared with the measured KLD (Spearman). The same sample scales the estimate to nats (least squares through 0).
Results are appended to data_dir()/gguf/budget_search.jsonl with the hardware fingerprint.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core import models
from core.experiments import llamacpp_kld
from core.measure import benchmark, evaluate, quant_error
from core.paths import data_dir
from core.runtimes import llamacpp_build
from core.store import jsonl
from core.techniques import gguf, gguf_budget
from core.techniques.gguf_cache import atomic_file

N_CTX = 512
PRESETS = ("q3_k_m", "q4_k_m", "q5_k_m")
# (kind, first layer, last layer, type): one group dropped from Q8_0 at a time. Types are the lowest each kind can
# take on this model's 576-wide rows (q4_0, iq4_nl), and k-types for the MLP down projection (1536 wide).
SAMPLE = (("attn_v", 0, 9, "q4_0"), ("attn_v", 20, 29, "q4_0"), ("attn_q", 0, 9, "q4_0"), ("attn_k", 10, 19, "q4_0"),
          ("attn_output", 20, 29, "q4_0"), ("ffn_gate", 0, 9, "q4_0"), ("ffn_up", 10, 19, "iq4_nl"),
          ("ffn_down", 0, 9, "q2_k"), ("ffn_down", 20, 29, "q3_k"), ("ffn_down", 10, 19, "q4_k"),
          ("token_embd", -1, -1, "q4_0"), ("ffn_up", 20, 29, "q5_0"))


def results_path() -> Path:
    return data_dir() / "gguf" / "budget_search.jsonl"


@dataclass(frozen=True)
class Validation:
    """The estimate against measured KLD on the sample (calibration text)."""
    labels: list
    estimate_relative: list
    estimate_absolute: list
    kld_measured: list  # nats, llama-perplexity's mean KLD
    spearman_relative: float
    spearman_absolute: float
    estimator: str  # the one that ranks the sample better
    nats_per_unit: float  # scale of the chosen estimate

    def predict(self, estimate: float) -> float:
        return self.nats_per_unit * estimate


@dataclass(frozen=True)
class Measured:
    key: str
    role: str  # "searched" or "preset"
    size_bytes: int
    kld_mean: float
    kld_mean_uncertainty: float
    kld_p99: float
    same_top: float
    ppl: float
    decode_tokens_per_s: float
    predicted_kld: float | None = None
    budget_bytes: int | None = None
    recipe_words: list = field(default_factory=list)
    tensor_type_args: list = field(default_factory=list)


def _sample_types(table: gguf_budget.SensitivityTable, kind: str, first: int, last: int, qtype: str) -> dict:
    """Every tensor at Q8_0 but the group, at `qtype` (or, where its rows cannot take it, its smallest type)."""
    types = {r.name: "q8_0" for r in table.rows}
    for r in table.rows:
        if r.kind == kind and first <= r.layer <= last:
            have = [c.qtype for c in r.choices]  # sorted by bytes
            types[r.name] = qtype if qtype in have else have[0]
    return types


def _kld(path: Path, base: Path, threads: int):
    found, _ = llamacpp_kld.tool_kld(path, base, N_CTX, threads)
    return found


def validate(checkpoint: Path, table: gguf_budget.SensitivityTable, base: Path, threads: int, say,
             importance: dict | None = None) -> Validation:
    """Measure the sample (cached beside the table): each group dropped alone, KLD on the calibration text."""
    cached = table_folder(checkpoint) / f"validation-{table.key}.json"
    if cached.is_file():
        return Validation(**json.loads(cached.read_text()))
    f32 = gguf.ensure_file(checkpoint, gguf.GGUFConfig("f32"), threads)
    labels, rel, absolute, measured = [], [], [], []
    with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".sample-") as tmp:
        for kind, first, last, qtype in (("base", 0, -1, "q8_0"),) + SAMPLE:
            label = "all Q8_0" if kind == "base" else f"{kind} {'' if first < 0 else f'{first}-{last} '}{qtype}"
            say(f"Sample {label}: quantize, then llama-perplexity on the calibration text")
            types = _sample_types(table, kind, first, last, qtype)
            if label != "all Q8_0" and types == _sample_types(table, "base", 0, -1, "q8_0"):
                continue  # the group is empty in this model (fewer layers)
            path = gguf_budget.quantize_file(f32, Path(tmp) / "sample.gguf", gguf_budget.base_ftype(types, table),
                                             threads, overrides=gguf_budget.tensor_type_args(types),
                                             imatrix=importance if table.imatrix else None)
            labels.append(label)
            rel.append(table.predicted(types, "relative"))
            absolute.append(table.predicted(types, "absolute"))
            measured.append(_kld(path, base, threads).kld_mean)
            path.unlink()
    s_rel, s_abs = quant_error.spearman(rel, measured), quant_error.spearman(absolute, measured)
    estimator = "absolute" if s_abs > s_rel else "relative"
    scale = quant_error.fit_scale(absolute if estimator == "absolute" else rel, measured)
    found = Validation(labels, rel, absolute, measured, s_rel, s_abs, estimator, scale)
    atomic_file(cached, lambda t: t.write_text(json.dumps(asdict(found))))
    return found


def table_folder(checkpoint: Path) -> Path:
    return gguf.cache_dir(checkpoint) / "budget"


def decode_speed(path: Path, threads: int, tokens: int = 64, repeats: int = 3) -> float:
    """llama-bench's decode tokens/s (tg test, batch 1, flash attention as the tool's default)."""
    done = subprocess.run([str(llamacpp_build.tool("llama-bench")), "-m", str(path), "-p", "0", "-n", str(tokens),
                           "-t", str(threads), "-r", str(repeats), "-o", "json"],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"llama-bench failed on {path.name}: {done.stderr.strip()[-300:]}")
    return float(json.loads(done.stdout)[0]["avg_ts"])


def measure(key: str, role: str, path: Path, base: Path, threads: int, **extra) -> Measured:
    kld = _kld(path, base, threads)
    return Measured(key, role, path.stat().st_size, kld.kld_mean, kld.kld_mean_uncertainty, kld.kld_p99,
                    kld.same_top, kld.ppl_quant, decode_speed(path, threads), **extra)


def preset_file(checkpoint: Path, quant: str, threads: int, imatrix: bool = False) -> Path:
    return gguf.ensure_file(checkpoint, gguf.GGUFConfig(quant, imatrix=imatrix), threads)  # type: ignore[arg-type]


def check_presets(presets: list[str]) -> None:
    unknown = [p for p in presets if p not in gguf.FTYPES or p in ("f32", "f16")]
    if unknown:
        raise ValueError(f"unknown preset(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(q for q in gguf.FTYPES if q not in ('f32', 'f16'))}")


def budgets_of_presets(checkpoint: Path, presets: list[str], threads: int) -> list[int]:
    """The byte sizes of the named presets' files (each built once if missing)."""
    check_presets(presets)
    return [preset_file(checkpoint, p, threads).stat().st_size for p in presets]


def run(budgets_bytes: list[int] | None = None, presets: list[str] | None = None, imatrix: bool = False,
        model_name: str = models.DEFAULT_MODEL, threads: int = 2, say=lambda _m: None) -> dict:
    """Search, write and measure one file per budget, and the presets beside them; the rows are also stored."""
    if bool(budgets_bytes) == bool(presets):
        raise ValueError("give either budgets (bytes) or presets to match, not both and not neither")
    if (problem := llamacpp_build.why_not_tools()) is not None:
        raise FileNotFoundError(problem)
    check_presets(presets or [])  # before the model is prepared: a typo costs nothing
    t0 = time.monotonic()
    checkpoint = models.prepare(models.resolve(model_name), progress=say)
    gguf_budget.check_model(checkpoint)  # before anything is written
    table = gguf_budget.sensitivity(checkpoint, imatrix, threads, say)
    budgets = budgets_bytes or budgets_of_presets(checkpoint, presets, threads)
    recipes = [gguf_budget.plan(table, b) for b in budgets]  # bad budgets fail here, before any file
    importance = None
    if imatrix:
        importance = gguf.importance_matrix(checkpoint, gguf.calibration_text_path().read_text(encoding="utf-8"))
    f32 = gguf.ensure_file(checkpoint, gguf.GGUFConfig("f32"), threads)
    with tempfile.TemporaryDirectory(prefix="budget-kld-") as work:
        say("llama-perplexity: the F32 base's log-probs on the calibration text")
        calib = Path(work) / "calibration.kld"
        llamacpp_kld.tool_base(f32, gguf.calibration_text_path(), N_CTX, threads, -1, calib)
        check = validate(checkpoint, table, calib, threads, say, importance)
        recipes = [gguf_budget.plan(table, b, check.estimator) for b in budgets]
        say("llama-perplexity: the F32 base's log-probs on the evaluation text")
        base = Path(work) / "eval.kld"
        llamacpp_kld.tool_base(f32, evaluate.DEFAULT_PPL_TEXT, N_CTX, threads, -1, base)
        rows = []
        for recipe in recipes:
            say(f"Writing and measuring {recipe.key}")
            path = gguf_budget.write(checkpoint, recipe, table, threads, importance)
            rows.append(measure(recipe.key, "searched", path, base, threads, predicted_kld=check.predict(recipe.estimate),
                                budget_bytes=recipe.budget_bytes, recipe_words=gguf_budget.describe(recipe.types),
                                tensor_type_args=gguf_budget.tensor_type_args(recipe.types)))
        for quant, im in [(p, False) for p in PRESETS] + [("q4_k_m", True)]:
            say(f"Measuring preset {quant}{'-imatrix' if im else ''}")
            rows.append(measure(f"gguf-{quant}{'-imatrix' if im else ''}", "preset",
                                preset_file(checkpoint, quant, threads, im), base, threads))
    out = {"model": model_name, "imatrix": imatrix, "table": table.key, "validation": asdict(check),
           "rows": [asdict(r) for r in rows], "elapsed_s": round(time.monotonic() - t0, 1),
           "text": evaluate.DEFAULT_PPL_TEXT.name, "n_ctx": N_CTX,
           "provenance": benchmark.environment("cpu", threads).provenance(), "at": time.time()}
    jsonl.append(results_path(), [out])
    return out


def frontier_rows(result: dict) -> list[dict]:
    """Size against measured KLD for a chart: the searched files (a frontier) and the presets, as data rows."""
    return sorted(({"key": r["key"], "role": r["role"], "size_mb": r["size_bytes"] / 1e6, "kld_mean": r["kld_mean"],
                    "kld_mean_uncertainty": r["kld_mean_uncertainty"], "predicted_kld": r["predicted_kld"]}
                   for r in result["rows"]), key=lambda d: (d["role"], d["size_mb"]))


def nearest_preset(result: dict, size_bytes: int) -> dict | None:
    """The preset whose file size is closest to `size_bytes` (the one a searched file is compared with)."""
    presets = [r for r in result["rows"] if r["role"] == "preset" and not r["key"].endswith("-imatrix")]
    return min(presets, key=lambda r: abs(r["size_bytes"] - size_bytes)) if presets else None
