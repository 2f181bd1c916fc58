"""`--workers N`: the items run in N local processes give the results of one process, each setting's fits are made
once (the schedule), and a worker that dies or fails ends the run with a clear error that keeps the finished items
for --resume and leaves no process behind."""

import multiprocessing
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from same_results import assert_same, results

from nte_eval.cli import main
from nte_eval.cluster.schedule import Schedule
from nte_eval.evaluate.run_folder import FITS, SHARDS

PLUGINS = Path(__file__).parent / "plugins"
COUNTS_FITS, DIES_ONCE = str(PLUGINS / "counts_fits.py"), str(PLUGINS / "dies_once.py")  # see their docstrings
SUITE = {"name": "workers", "seed": 5, "data": {"source": "digits", "split": "test", "limit": 30},
         "public": {"source": "digits", "split": "train"},
         "designated": "zoo:vit_null", "models": ["zoo:mlp_linear", "zoo:resnet_stem"],
         "encoders": [{"type": "nte", "psnr": [30, 0]}, {"type": "nte", "psnr": 10, "noise": "tiled"}],
         "attacks": ["identity", {"type": "gaussian_noise", "sigma": 0.05}, "blind_fill", "bn_adapt",
                     {"type": "learned_denoiser", "steps": 20, "pairs": 64, "width": 8}],
         "shard_size": 10}

# Plugin attacks that fail with a user-facing error, and with a bug (one file each: attack names are global).
FAILS = {"test_worker_refuses": '''
from nte_eval.attacks import Attack
from nte_eval.errors import NTEError

class Refuses(Attack):
    name = "test_worker_refuses"
    knowledge = "none"

    def run(self, x):
        raise NTEError("test_worker_refuses: this image is not mine")
''', "test_worker_buggy": '''
from nte_eval.attacks import Attack

class Buggy(Attack):
    name = "test_worker_buggy"
    knowledge = "none"

    def run(self, x):
        return x[None][5]
'''}


def _suite(tmp_path, **changes) -> str:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({**SUITE, **changes}))
    return str(path)


def _run(*args: str) -> int:
    return main(["run", *args, "--quiet", "--threads", "1"])


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    assert _run(_suite(tmp), "--out", str(tmp / "out")) == 0
    return tmp / "out"


def test_worker_processes_give_the_results_of_one_process(one_process, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(_suite(tmp_path), "--out", str(out), "--workers", "2", "--batch-size", "7") == 0
    assert "2 worker process(es), 1 thread(s) each, for 45 item(s) in 9 group(s)" in capsys.readouterr().err
    assert_same(results(one_process), results(out))
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


def test_the_schedule_fits_each_setting_once():
    """A worker keeps to its setting, else starts one nobody has started, else joins one whose first group has
    finished (its fits are kept), else waits."""
    def work(setting, start):
        return (type("I", (), {"start": start})(), setting, 0)

    schedule = Schedule([work(s, start) for s in ("a", "b") for start in (0, 10, 20)])
    assert [g[0][1] for g in schedule.todo] == ["a"] * 3 + ["b"] * 3
    assert schedule.take("w1")[0][1] == "a" and schedule.take("w2")[0][1] == "b"
    assert schedule.take("w3") is None  # a and b are being fitted: w3 waits
    schedule.finished("w2")
    assert schedule.take("w3")[0][1] == "b" and schedule.take("w2")[0][1] == "b"  # b is ready: both join it
    assert schedule.take("w4") is None and schedule.todo  # only a is left, still being fitted
    schedule.finished("w1")
    assert [schedule.take(w)[0][1] for w in ("w4", "w1")] == ["a", "a"]
    assert schedule.take("w1") is None and not schedule.todo


def test_three_workers_fit_each_of_three_settings_once(tmp_path, monkeypatch, capsys):
    """Nine groups (three settings x three shards) over three workers: the kept fit is made once per setting."""
    monkeypatch.setenv("NTE_EVAL_TEST_FITS", str(tmp_path / "fits.txt"))
    suite = _suite(tmp_path, plugins=[COUNTS_FITS], attacks=["identity", "test_counts_fits"])
    assert _run(suite, "--out", str(tmp_path / "out"), "--workers", "3") == 0
    assert "3 worker process(es)" in capsys.readouterr().err
    assert len((tmp_path / "fits.txt").read_text().split()) == 3
    assert not multiprocessing.active_children()


def test_a_worker_that_dies_ends_the_run_and_resume_finishes_it(one_process, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NTE_EVAL_TEST_MARKER", str(tmp_path / "marker"))
    suite = _suite(tmp_path, plugins=[DIES_ONCE], attacks=[*SUITE["attacks"], "test_dies_once"])
    out = tmp_path / "out"
    assert _run(suite, "--out", str(out), "--workers", "2") == 2
    err = capsys.readouterr().err
    assert "a worker process died (exit code 3; its own message is above)" in err and "rerun with --resume" in err
    assert not (out / "results.csv").exists() and not multiprocessing.active_children()
    assert _run(suite, "--out", str(out), "--workers", "2", "--resume") == 0
    both = results(out)
    assert_same(results(one_process), both[both.attack != "test_dies_once"].reset_index(drop=True))
    assert len(list((out / SHARDS).glob("*.parquet"))) == 3 * 6 * 3  # settings x attack settings x shards


@pytest.mark.parametrize(("attack", "says"), [
    ("test_worker_refuses", "test_worker_refuses: this image is not mine (in a worker process; finished items are "
                            "kept: rerun with --resume)"),
    ("test_worker_buggy", "IndexError"),
])
def test_an_error_in_a_worker_stops_the_run_with_its_message(tmp_path, capsys, attack, says):
    (tmp_path / "fails.py").write_text(FAILS[attack])
    suite = _suite(tmp_path, plugins=["fails.py"], attacks=["identity", attack], encoders=[{"type": "nte", "psnr": 30}],
                   shard_size=30)  # one group: identity finishes, then the attack fails
    if attack == "test_worker_buggy":  # a bug is not a user error: its traceback, from the worker
        with pytest.raises(RuntimeError, match="a worker process failed") as failed:
            _run(suite, "--out", str(tmp_path / "out"), "--workers", "2")
        assert says in str(failed.value) and "Traceback" in str(failed.value)
    else:
        assert _run(suite, "--out", str(tmp_path / "out"), "--workers", "2") == 2
        assert says in capsys.readouterr().err
    assert list((tmp_path / "out" / SHARDS).glob("*.parquet"))  # identity's items finished first: kept
    assert not multiprocessing.active_children()


def test_workers_go_with_the_local_executor_only(tmp_path, capsys):
    assert _run(_suite(tmp_path), "--out", str(tmp_path / "o"), "--workers", "2", "--executor", "ray") == 2
    assert "--workers 2 is for the local executor" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        _run(_suite(tmp_path), "--out", str(tmp_path / "o"), "--workers", "0")
    assert stop.value.code == 2 and "'0' is not a positive integer" in capsys.readouterr().err
