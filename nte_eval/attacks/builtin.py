"""Imports every built-in attack module, so that their classes register (the registry imports this lazily)."""

from nte_eval.attacks import chain, denoise, learned, method, none, oracle, surrogate, text  # noqa: F401
