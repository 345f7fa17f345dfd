"""Benchmarks: machine ceiling, training step per method, corpus encoding, LLM-signal cache, frozen-LM
memory and DREAM's one-pass injection. ``make bench`` runs them all (``python -m bench``)."""
