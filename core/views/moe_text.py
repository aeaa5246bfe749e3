"""The Mixture-of-experts page's words: what a setting is called, and why the seed's claim differs from what is
measured here. No streamlit; the numbers a page shows beside them come from records."""

from __future__ import annotations

from core.views.distill import PUBLIC_AND_ANSWERS

SHARED_HELP = ("Experts made of the neurons that are among each token's strongest on almost every calibration token. "
               "They run for every token (as in CMoE and DeepSeek-MoE); the router only picks among the others. "
               "0 = every expert is routed, the first carve's recipe.")

HEAL_HELP = ("Trains the carve to give the dense model's next-token probabilities on the healing text (Heal on), "
             "for this many minutes (the router and embeddings stay as they are), then measures the healed carve "
             "beside the plain one. Pick a single k.")
HEAL_SCOPE_NAMES = {"experts": "the experts only", "all": "experts, attention and norms"}
HEAL_ANSWERS, HEAL_PUBLIC = "the teacher's answers", PUBLIC_AND_ANSWERS
HEAL_TEXT_HELP = ("The answers alone are a few hundred short texts: a long heal sees them many times over. "
                  "WikiText-2's public test text (about 300k tokens, none of them in the evaluation) beside them gives "
                  "it far more to learn from; the lab's best healed student and carve were trained on both. Offered "
                  "where ../shared/data holds it.")
HEAL_SCOPE_HELP = ("The experts alone keep the rest of the model exactly the dense one's; with attention and norms too, "
                   "the layers around the experts adapt to what the carve changed, which recovers more in the same "
                   "minutes here (the saved healing is then larger: every trained tensor is kept).")

SHARED_WHY = (
    "The seed says a mixture of experts \"activates only the necessary parts\". That is true of models trained as "
    "mixtures (Mixtral, DeepSeek-MoE), whose experts learned to specialise. This model was trained dense, and its "
    "SwiGLU feed-forward neurons are not naturally sparse: a few are busy on almost every token, and routing them "
    "away is what turns a plain carve into a different model at a small share of the work. Keeping those neurons "
    "always on (shared experts) and routing the rest with a router built from activation statistics stays much "
    "closer to the dense model at the same share of work. Training the carved experts to match the dense model "
    "(healing, as LLaMA-MoE and CMoE do with GPUs) recovers more: here it takes the minutes you give it. Speed: one token reads only the experts it runs, so "
    "the gain follows the share of feed-forward weights skipped, less the attention and output head every token "
    "reads whatever the setting.")


def setting_name(facts: dict) -> str:
    """'2 of 8' for a plain carve, '2 shared + 1 of 6' with shared experts, ', healed 10 min' after training: the
    slider's and the table's words."""
    experts, k, shared = facts["experts"], facts["top_k"], facts.get("shared_experts", 0)
    name = f"{shared} shared + {k} of {experts - shared}" if shared else f"{k} of {experts}"
    healed = facts.get("healed") or {}
    return name + (f", healed {healed.get('train_seconds', 0) / 60:.0f} min" if healed else "")


def ceiling_sentence(c, label: str) -> str:
    """What a routing ceiling (core.experiments.moe_ceiling.RoutingCeiling) says, for a newcomer."""
    verdict = ("a better router could win back most of it" if c.routing_share >= 0.5 else
               "the loss is in skipping experts, not in choosing them, and only training after the carve closes it")
    return (f"**{label}** is {c.kld_router_nats:.2f} nats from the dense model with its router; a router that knew "
            f"each token's most important experts (an oracle that runs them all to find out, so never faster) would "
            f"still leave {c.kld_oracle_nats:.2f} nats: {verdict}. Measured on {c.positions:,} tokens of the "
            f"evaluation text.")
