"""Comparing two runs' results.csv and kept fits, for the tests that run one suite several ways (batch and shard
sizes, --shard processes, --workers, Ray) and expect the same results."""

from pathlib import Path

import pandas as pd
import torch

from nte_eval.evaluate.run_folder import FITS

KEY = ["encoder", "encoder_params", "attack", "attack_params", "model", "metric"]
# The models' own float32 arithmetic depends on the batch size (oneDNN/BLAS pick kernels by shape): the same image's
# logits differ by up to ~1e-5 between batches of 50 and 16 (mlp_linear), so the two metrics computed from raw model
# outputs agree to float32 precision, not 1e-9. Every other metric (accuracies, PSNRs, SSIMs, ...) is equal to 1e-9.
FLOAT32 = {"logit_change", "first_layer_ratio"}


def results(out) -> pd.DataFrame:
    """A run folder's results.csv, its rows sorted by cell, model and metric."""
    frame = pd.read_csv(out / "results.csv", dtype=str, keep_default_na=False)
    return frame.assign(value=frame.value.astype(float)).sort_values(KEY).reset_index(drop=True)


def assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """The same rows, and values equal to 1e-9 (the raw-output metrics to float32 precision)."""
    assert a[KEY].equals(b[KEY])
    raw = a.metric.isin(FLOAT32)
    assert (a.value - b.value)[~raw].abs().max() <= 1e-9
    assert ((a.value - b.value)[raw].abs() <= 1e-5 * a.value[raw].abs().clip(lower=1)).all()


def assert_same_fits(a: Path, b: Path) -> list[dict]:
    """The same fit files under both runs' ``fits/``, their tensors equal bit for bit and other values equal; returns
    ``a``'s states."""
    mine, theirs = sorted((a / FITS).glob("*.pt")), sorted((b / FITS).glob("*.pt"))
    assert [p.name for p in mine] == [p.name for p in theirs] and mine
    states = []
    for x, y in zip(mine, theirs, strict=True):
        sx, sy = torch.load(x, weights_only=True), torch.load(y, weights_only=True)
        (flat_x, tree_x), (flat_y, tree_y) = torch.utils._pytree.tree_flatten(sx), torch.utils._pytree.tree_flatten(sy)
        assert tree_x == tree_y, x.name
        assert all(torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v
                   for u, v in zip(flat_x, flat_y, strict=True)), x.name
        states.append(sx)
    return states
