"""Imports every built-in attack module, so that their classes register (the registry imports this lazily)."""

from nte_eval.attacks import chain, denoisers, learned, preprocessing, text  # noqa: F401
from nte_eval.attacks.subspace import method, oracle, surrogate  # noqa: F401
