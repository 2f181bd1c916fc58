"""`--workers N`: the items run in N local processes give the results of one process, each setting's fits are made
once, and a worker that dies ends the run with a clear error that keeps the finished items for --resume."""

import pandas as pd
import pytest
import torch
import yaml

from nte_eval.cli import main
from nte_eval.cluster.processes import groups, next_group
from nte_eval.evaluate.run_folder import FITS, SHARDS

SUITE = {"name": "workers", "seed": 5, "data": {"source": "digits", "split": "test", "limit": 30},
         "public": {"source": "digits", "split": "train"},
         "designated": "zoo:vit_null", "models": ["zoo:mlp_linear", "zoo:resnet_stem"],
         "encoders": [{"type": "nte", "psnr": [30, 0]}, {"type": "nte", "psnr": 10, "noise": "tiled"}],
         "attacks": ["identity", {"type": "gaussian_noise", "sigma": 0.05}, "blind_fill", "bn_adapt",
                     {"type": "learned_denoiser", "steps": 20, "pairs": 64, "width": 8}],
         "shard_size": 10}
KEY = ["encoder", "encoder_params", "attack", "attack_params", "model", "metric"]
FLOAT32 = {"logit_change", "first_layer_ratio"}  # raw model outputs: float32 precision (see test_shards.py)

# A plugin attack whose first call in a run kills its process (an OOM kill, say); the marker file lets the rerun pass.
DIES_ONCE = '''
import os
from pathlib import Path
from nte_eval.attacks import Attack

class DiesOnce(Attack):
    name = "test_worker_dies_once"
    knowledge = "none"

    def run(self, x):
        marker = Path(os.environ["NTE_EVAL_TEST_MARKER"])
        if not marker.exists():
            marker.write_text("died")
            os._exit(3)
        return x
'''


def _suite(tmp_path, **changes) -> str:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({**SUITE, **changes}))
    return str(path)


def _run(*args: str) -> int:
    return main(["run", *args, "--quiet", "--threads", "1"])


def _results(out) -> pd.DataFrame:
    frame = pd.read_csv(out / "results.csv", dtype=str, keep_default_na=False)
    return frame.assign(value=frame.value.astype(float)).sort_values(KEY).reset_index(drop=True)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert a[KEY].equals(b[KEY])
    raw = a.metric.isin(FLOAT32)
    assert (a.value - b.value)[~raw].abs().max() <= 1e-9
    assert ((a.value - b.value)[raw].abs() <= 1e-5 * a.value[raw].abs().clip(lower=1)).all()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    assert _run(_suite(tmp), "--out", str(tmp / "out")) == 0
    return tmp / "out"


def test_worker_processes_give_one_processs_results(one_process, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(_suite(tmp_path), "--out", str(out), "--workers", "2", "--batch-size", "7") == 0
    assert "2 worker process(es), 1 thread(s) each, for 45 item(s) in 9 group(s)" in capsys.readouterr().err
    _same(_results(one_process), _results(out))
    assert (sorted(map(tuple, pd.read_csv(out / "samples.csv", dtype=str).values))
            == sorted(map(tuple, pd.read_csv(one_process / "samples.csv", dtype=str).values)))
    # the fitted denoisers and the adapted models the workers saved are those one process saves, bit for bit
    mine, theirs = sorted((out / FITS).glob("*.pt")), sorted((one_process / FITS).glob("*.pt"))
    assert [p.name for p in mine] == [p.name for p in theirs] and mine
    for a, b in zip(mine, theirs, strict=True):
        sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        assert repr(sa.keys()) == repr(sb.keys())
        flat_a, flat_b = torch.utils._pytree.tree_flatten(sa)[0], torch.utils._pytree.tree_flatten(sb)[0]
        assert all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
                   for x, y in zip(flat_a, flat_b, strict=True))


def test_a_free_worker_keeps_to_its_setting():
    """Groups of the setting a worker holds first, then of settings no other worker holds, then any."""
    def work(setting, start):
        return (type("I", (), {"start": start})(), setting, 0)

    todo = groups([work(s, start) for s in ("a", "b", "c") for start in (0, 10)])
    assert [g[0][1] for g in todo] == ["a", "a", "b", "b", "c", "c"]
    taken = [next_group(todo, held, {"a"})[0][1] for held in ("b", "b", "b", "c", "c")]
    assert taken == ["b", "b", "c", "c", "a"]  # b, then c (a is held by the other worker), then a is shared
    assert next_group(todo, "a", set())[0][1] == "a" and next_group(todo, "a", set()) is None


def test_a_worker_that_dies_ends_the_run_and_resume_finishes_it(one_process, tmp_path, capsys, monkeypatch):
    (tmp_path / "dies_once.py").write_text(DIES_ONCE)
    monkeypatch.setenv("NTE_EVAL_TEST_MARKER", str(tmp_path / "marker"))
    suite = _suite(tmp_path, plugins=["dies_once.py"], attacks=[*SUITE["attacks"], "test_worker_dies_once"])
    out = tmp_path / "out"
    assert _run(suite, "--out", str(out), "--workers", "2") == 2
    err = capsys.readouterr().err
    assert "a worker process died (exit code 3)" in err and "rerun with --resume" in err
    assert not (out / "results.csv").exists()
    assert _run(suite, "--out", str(out), "--workers", "2", "--resume") == 0
    both = _results(out)
    _same(_results(one_process), both[both.attack != "test_worker_dies_once"].reset_index(drop=True))
    assert len(list((out / SHARDS).glob("*.parquet"))) == 3 * 6 * 3  # settings x attack settings x shards


def test_workers_go_with_the_local_executor_only(tmp_path, capsys):
    assert _run(_suite(tmp_path), "--out", str(tmp_path / "o"), "--workers", "2", "--executor", "ray") == 2
    assert "--workers 2 is for the local executor" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        _run(_suite(tmp_path), "--out", str(tmp_path / "o"), "--workers", "0")
    assert stop.value.code == 2 and "'0' is not a positive integer" in capsys.readouterr().err
