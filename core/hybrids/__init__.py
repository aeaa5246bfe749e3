"""Hybrids: the LLM combined with something cheaper (a classical model in front of it, n-grams from the prompt as
drafts), measured against the LLM alone by the lab's harness."""
