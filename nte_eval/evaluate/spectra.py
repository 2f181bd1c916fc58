"""First-layer singular value spectra in pixel space, one table per model (``spectra.csv``).

Each model is shown in the view its NTEs would use: the per-patch kernel matrix W D^-1 for non-overlapping and
Linear first layers, the circular image-space operator (all Fourier polyphase blocks) for overlapping stems.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from nte_eval.errors import NTEError
from nte_eval.geometry.conv import rfft_column_weights
from nte_eval.geometry.subspace import DEFAULT_SELECT, Select, cached_subspace, natural_view
from nte_eval.models.handle import ModelHandle

SPECTRA_COLUMNS = ["model", "view", "sigma", "count", "exact_null"]


def spectrum_rows(name: str, handle: ModelHandle) -> pd.DataFrame:
    """The model's first-layer singular values (one row per value, with its multiplicity ``count``) in its view."""
    if handle.modality == "text":
        return pd.DataFrame([{"model": name, "view": "unavailable: a text model (its first operator is the token "
                              "embedding matrix, noised per token on keyed subsets)", "sigma": np.nan, "count": 0,
                              "exact_null": False}], columns=SPECTRA_COLUMNS)
    view = natural_view(handle.first)
    try:
        sub = cached_subspace(handle, view, Select.parse(DEFAULT_SELECT))
    except NTEError as e:
        return pd.DataFrame([{"model": name, "view": f"unavailable: {e}", "sigma": np.nan, "count": 0,
                              "exact_null": False}], columns=SPECTRA_COLUMNS)
    sigma = sub.sigma.double()
    if view == "patch":
        count = torch.ones_like(sigma)
    else:
        count = rfft_column_weights(sub.grid[1]).to(sigma)[None, :, None].expand_as(sigma)
    return pd.DataFrame({"model": name, "view": view, "sigma": sigma.flatten().numpy(),
                         "count": count.flatten().numpy().astype(int),
                         "exact_null": (sigma <= sub.tol).flatten().numpy()}, columns=SPECTRA_COLUMNS)
