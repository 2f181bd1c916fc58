"""Fitted attacks kept under the run folder's fits/: a resumed run, or a Ray actor started by a restarted driver,
restores a trained denoiser instead of training it again, with the same results; a damaged fit is fitted again."""

import pandas as pd
import torch
import yaml
from threadpoolctl import threadpool_limits

from nte_eval.attacks.learned import LearnedDenoiser
from nte_eval.cli import main
from nte_eval.cluster.ray_executor import ItemActor
from nte_eval.evaluate.fits import FitStore
from nte_eval.evaluate.run_folder import FITS, SHARDS
from nte_eval.evaluate.suite import load_suite

SUITE = {"name": "fits", "seed": 3, "data": {"source": "digits", "split": "test", "limit": 20},
         "public": {"source": "digits", "split": "train"}, "designated": ["zoo:vit_null", "zoo:resnet_nullstem"],
         "models": ["zoo:mlp_linear"],
         "encoders": [{"type": "nte", "psnr": 10}],
         "attacks": ["identity", {"type": "learned_denoiser", "steps": 20, "pairs": 64, "width": 8}]}


def _run(suite: str, out, *more: str) -> int:
    return main(["run", suite, "--out", str(out), "--quiet", "--threads", "1", *more])


def _results(out) -> pd.DataFrame:
    return pd.read_csv(out / "results.csv").sort_values(["attack", "model", "metric"]).reset_index(drop=True)


def _no_training(monkeypatch) -> list[int]:
    calls: list[int] = []
    train = LearnedDenoiser.train

    def counted(self, *args):
        calls.append(1)
        return train(self, *args)

    monkeypatch.setattr(LearnedDenoiser, "train", counted)
    return calls


def test_a_resumed_run_restores_the_fit_and_a_damaged_one_is_fitted_again(tmp_path, monkeypatch):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    out = tmp_path / "out"
    assert _run(str(suite), out) == 0
    saved = list((out / FITS).glob("*.pt"))
    assert len(saved) == 2  # one attack setting that saves its fit, on each designated model's encoder setting
    before = _results(out)
    calls = _no_training(monkeypatch)
    for path in (out / SHARDS).glob("*.parquet"):  # every item runs again ...
        path.unlink()
    assert _run(str(suite), out, "--resume") == 0
    assert calls == []  # ... without training the denoiser again
    pd.testing.assert_frame_equal(_results(out), before)
    saved[0].write_bytes(b"not a torch file")  # a damaged fit: trained again (that one only), and saved whole
    for path in (out / SHARDS).glob("*.parquet"):
        path.unlink()
    assert _run(str(suite), out, "--resume") == 0
    assert calls == [1]
    assert torch.load(saved[0], weights_only=True)["net"]
    pd.testing.assert_frame_equal(_results(out), before)


def test_an_actor_starts_from_the_drivers_fits_and_sends_back_only_new_ones(tmp_path, monkeypatch):
    """The Ray actor class itself, in this process: with the driver's fits it trains nothing."""
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(SUITE))
    suite = load_suite(suite_file)
    # the actor limits torch and BLAS threads for its process: both are restored for the tests after this one
    threads, limits = torch.get_num_threads(), threadpool_limits(limits=None)
    try:
        fresh = ItemActor(suite, "cpu", None, 1, {})
        done, states = fresh.run(fresh.worker.work())
        assert len(states) == 2  # trained here (one per designated model), sent to the driver
        calls = _no_training(monkeypatch)
        driver = FitStore(tmp_path / FITS)
        for key, state in states.items():
            driver.put(key, state)
        restarted = ItemActor(suite, "cpu", None, 1, FitStore(tmp_path / FITS).read_all())
        again, new = restarted.run(restarted.worker.work())
    finally:
        torch.set_num_threads(threads)
        limits.restore_original_limits()
    assert calls == [] and new == {}
    for a, b in zip(done, again, strict=True):
        pd.testing.assert_frame_equal(a.frame, b.frame)
