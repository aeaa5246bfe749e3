"""Mixture-of-experts made from a dense model (MoEfication): split every gated MLP into E experts and
run only the k experts a small router picks for each token.

How a dense MLP becomes E experts
---------------------------------
A gated MLP computes ``y = W_down (act(W_gate x) * (W_up x))``. Its m intermediate neurons do not
interact until that final sum, so any partition of them into E groups gives E smaller MLPs whose
outputs add up to y exactly. On calibration text (``assets/eval/moe_calibration.txt``, written for this
project and separate from the evaluation text) we record each MLP's input and group neurons that are
active on the same tokens (balanced spherical k-means on each neuron's contribution |h_j| * ||down_j||
over the calibration tokens: MoEfication's co-activation grouping). Every expert gets m / E neurons, so
every expert costs the same to run. On SmolLM2-135M this beat clustering the neurons' weight vectors
(KL divergence at 4 of 8 experts 1.9 against 2.5 nats).

How the router is fitted, and what a skipped expert contributes
---------------------------------------------------------------
For each calibration token we measure how much each expert matters: the L2 norm of its output minus its
mean output. The router is one linear map x -> E scores per layer, fitted by ridge regression to each
token's *share* of that (so every token weighs the same in the fit). Ridge regression is closed-form:
deterministic, no learning rate, a fraction of a second per layer on a CPU. At run time the k
highest-scoring experts run and are added *unweighted*; every skipped expert contributes its mean
calibration output instead of nothing (measured: k = 1 of 8 went from 18.7 to 8.0 nats of KL divergence).
With k = E the means cancel and the layer computes exactly the dense MLP (softmax-weighted routing,
as in Mixtral, would not).

Why the first MLP stays dense
-----------------------------
``MoEConfig.dense_layers`` (default 1) keeps the first MLP layers whole. In SmolLM2-135M the first MLP's
output is most of the residual stream (the token embeddings are small), so its error passes on
undiluted: at 2 of 8 experts, converting layer 0 alone cost 2.8 nats of KL divergence, every other
layer alone 0.04 to 0.2. Keeping it dense costs about 3% of the feed-forward weights per token.

What "skips" means here
-----------------------
Single-token decode runs only the k chosen experts, each a contiguous slice of the stacked weights (a
view, no copy), so the unselected experts' bytes are never read. Multi-token inputs (prefill, scoring)
dispatch the tokens routed to each expert and run that expert on those tokens only. With k = E nothing
can be skipped and the layer runs as one dense matmul over the permuted neurons.

Conversion takes about 15 s for SmolLM2-135M on a 2-core CPU and is cached under
``data_dir()/moe/<model>-E<E>-<hash>/`` (the plan, plus the stacked expert weights), keyed by checkpoint,
E, calibration tokens, seed and recipe version; every k then loads in a fraction of a second. Building a
variant maps the dense checkpoint lazily and takes the experts from the cache, so the dense MLP weights
are never read and resident memory matches the dense model's.

A model that is already a mixture of experts (Mixtral-, Qwen-MoE- or OLMoE-style, with
``num_experts_per_tok`` in its config) is not converted: it is loaded with its own experts and the
number of experts per token it runs is changed instead.
"""

from __future__ import annotations

from core.techniques.moe.config import (
    DEFAULT_DENSE_LAYERS,
    NATIVE_EXPERT_FIELDS,
    ConversionCancelled,
    LayerPlan,
    MoEConfig,
    MoEPlan,
    Progress,
    native_moe,
    native_moe_for_name,
    native_moe_of,
    parse_technique_key,
    technique_key,
)
from core.techniques.moe.layer import (
    ExpertGroup,
    MoEMLP,
    active_params,
    active_params_pct,
    apply_plan,
    architecture,
    bytes_read_per_token,
    check_convertible,
    dense_facts,
    dense_params,
    expert_groups,
    flops_per_token,
    gated_mlps,
    matmul_params,
    moe_layers,
    router_params,
    set_top_k,
    total_params,
    variant_facts,
)
from core.techniques.moe.partition import (
    KMEANS_ITERATIONS,
    MIN_NEURONS_PER_EXPERT,
    RIDGE,
    balanced_assignment,
    balanced_kmeans,
    coactivation_features,
    expert_means_and_importance,
    expert_outputs,
    firing_rate,
    fit_router,
    neurons_per_expert,
    partition_neurons,
    route,
    routing_recall,
    shared_and_routed,
    stack_experts,
    valid_expert_counts,
)
from core.techniques.moe.plan import (
    ALGORITHM_VERSION,
    CALIBRATION_TEXT,
    CALIBRATION_WINDOW_TOKENS,
    EXPERTS_FILE,
    PLAN_FILE,
    PLAN_INFO,
    apply_saved_experts,
    cache_root,
    calibration_ids,
    convert_to_moe,
    ensure_plan,
    expert_state,
    fit_plan,
    load_moe,
    load_plan,
    plan_dir,
    prepare_conversion,
    record_mlp_inputs,
    save_plan,
    unsupported_reason,
)
from core.techniques.registry import Technique, register, register_resolver
from core.words import plural

__all__ = [
    "ALGORITHM_VERSION", "CALIBRATION_TEXT", "CALIBRATION_WINDOW_TOKENS", "DEFAULT_DENSE_LAYERS", "EXPERTS_FILE",
    "KMEANS_ITERATIONS", "MIN_NEURONS_PER_EXPERT", "MOE_EXPLANATION", "MOE_SURPRISE", "NATIVE_EXPERT_FIELDS", "PLAN_FILE",
    "PLAN_INFO", "RIDGE", "ConversionCancelled", "ExpertGroup", "LayerPlan", "MoEConfig", "MoEMLP", "MoEPlan", "Progress",
    "active_params", "active_params_pct", "apply_plan", "apply_saved_experts", "architecture", "balanced_assignment",
    "balanced_kmeans", "bytes_read_per_token", "cache_root", "calibration_ids", "check_convertible",
    "coactivation_features", "convert_to_moe", "dense_facts", "dense_params", "ensure_plan", "expert_groups",
    "expert_means_and_importance", "expert_outputs", "expert_state", "fit_plan", "fit_router", "firing_rate", "flops_per_token",
    "gated_mlps", "load_moe", "load_plan", "matmul_params", "moe_layers", "moe_technique", "native_moe",
    "native_moe_for_name", "native_moe_of", "neurons_per_expert", "parse_technique_key", "partition_neurons", "plan_dir",
    "prepare_conversion", "record_mlp_inputs", "route", "router_params", "routing_recall", "save_plan", "set_top_k", "shared_and_routed",
    "stack_experts", "technique_key", "total_params", "unsupported_reason", "valid_expert_counts", "variant_facts",
]


# ---------------------------------------------------------------- registry entries


MOE_EXPLANATION = (
    "Each feed-forward layer's neurons are split into {experts} equal groups (experts) and a small router, fitted "
    "on calibration text, runs only the {top_k_experts} that {matter} most for each token: about {pct:.0f}% of the "
    "feed-forward weights are read per token (the first layer stays whole). With every expert running it "
    "computes exactly the dense model."
)
MOE_SURPRISE = (
    "The model holds as many bytes as the dense one (every expert stays in memory); what shrinks is the bytes "
    "read and the arithmetic per token. This model was trained dense, so its neurons were never taught to work "
    "in groups: quality falls fast as fewer experts run, unlike a model trained as a mixture of experts "
    "(LLaMA-MoE recovered quality by training the converted model further; nothing is trained here)."
)
SHARED_EXPLANATION = (
    "Each feed-forward layer's neurons are split into {experts} equal groups (experts). {shared} of them, made of the "
    "neurons that fire on almost every calibration token, always run (shared experts, as in CMoE and DeepSeek-MoE); "
    "a small router fitted on calibration text adds the {top_k_experts} of the other {routed} that {matter} most for "
    "each token: about {pct:.0f}% of the feed-forward weights are read per token (the first layer stays whole). "
    "With every expert running it computes exactly the dense model."
)
SHARED_SURPRISE = (
    "A few neurons of this dense model are busy on nearly every token; routing them away is what made the plain "
    "carve a different model. Keeping them always on (shared experts) costs a fixed share of the work on every "
    "token but keeps the model much closer to the dense one at the same share. Nothing is trained: the experts "
    "and the router come from measurements on calibration text."
)


def moe_technique(experts: int, top_k: int, dense_layers: int = DEFAULT_DENSE_LAYERS, shared: int = 0) -> Technique:
    """The registry entry for any (E, k, shared); the registry lists a few, `get` builds the rest on demand."""
    config = MoEConfig(experts=experts, top_k=top_k, dense_layers=dense_layers, shared=shared)
    label = (f"MoE {top_k} of {experts} experts" if not shared
             else f"MoE {shared} shared + {top_k} of {experts - shared} routed experts")
    label += "" if dense_layers == DEFAULT_DENSE_LAYERS else f", first {dense_layers} MLP layers dense"
    explanation = (SHARED_EXPLANATION if shared else MOE_EXPLANATION).format(
        experts=experts, shared=shared, routed=experts - shared, top_k_experts=plural(top_k, "expert"),
        pct=100 * config.active_share, matter=plural(top_k, "matters", "matter", number=False))
    return Technique(
        technique_key(experts, top_k, dense_layers, shared), label, "moe", config, explanation,
        SHARED_SURPRISE if shared else MOE_SURPRISE,
        load_moe, unsupported_reason, bytes_read_per_token=bytes_read_per_token, facts=variant_facts)




def _resolve(key: str) -> Technique | None:
    shape = parse_technique_key(key)  # any moe-<E>x<k>[-s<shared>][-d<dense>], validated by MoEConfig
    return moe_technique(*shape) if shape is not None else None


# k < E only: with every expert running (moe-8x8) the model reads more than the dense one (routers too), so it
# is a correctness check, not an optimisation; `get("moe-8x8")` still builds it for the MoE page and CLI.
register(*(moe_technique(8, k) for k in (1, 2, 4)), rank=3)
register_resolver(_resolve)

from core.techniques.moe import healed  # noqa: E402,F401  registers the healed carves' keys (moe-...-healed-<run>)
