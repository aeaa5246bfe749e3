"""GGUF files for llama.cpp, and the registry's GGUF variants. Importing this package registers them.

    config.py     GGUFConfig: which llama.cpp file type (and importance matrix) a variant asks for
    export.py     a lab checkpoint exported to an F32 GGUF file (the quantizer's input)
    quantizer.py  llama.cpp's own quantizer through the binding, and what it reports
    imatrix.py    the importance matrix, from calibration text
    cache.py      the checked file cache: atomic writes, a size and sha256 sidecar, never a torn file loaded
    files.py      the file a variant loads, built once per (checkpoint, config)
    variants.py   the registry entries (gguf-q4_k_m, ...) and GGUF files of the checkpoints the lab saved
    budget.py     a file that fits a size budget, with a type chosen per tensor (Fit my budget)
    searched.py   such a searched file as a registry variant, gguf-auto-<MB>[-imatrix]
"""

from core.runtimes.llamacpp import llama_cpp_problem  # noqa: F401
from core.techniques.gguf.config import FTYPES, GGUFConfig, QuantType  # noqa: F401
from core.techniques.gguf.files import ProgressFn, artifact, cache_dir, checkpoint_tag, ensure_file  # noqa: F401
from core.techniques.gguf.imatrix import calibration_text_path, importance_matrix  # noqa: F401
from core.techniques.gguf.quantizer import attach_imatrix, quantize, quantizer_facts  # noqa: F401
from core.techniques.gguf.variants import K_QUANTS, PREFIX, gguf_of_saved, saved_gguf_keys  # noqa: F401
from core.techniques.gguf.cache import SIDECAR, atomic_file, discard, file_facts, is_intact  # noqa: F401
from core.techniques.gguf.export import EXPORTER_VERSION, GGUFError, check_exportable, export_f32  # noqa: F401

# after the presets, as before the move: the resolver of searched files, gguf-auto-<MB>[-imatrix]
from core.techniques.gguf import searched  # noqa: E402,F401  isort: skip
