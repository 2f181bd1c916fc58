"""`--workers N`: the items run in N local processes give the results of one process, each setting's fits are made
once (the schedule), and a worker that dies or fails ends the run with a clear error that keeps the finished items
for --resume and leaves no process behind."""

import multiprocessing
from pathlib import Path

import pandas as pd
import pytest
import yaml
from same_results import assert_same, assert_same_fits, results

from nte_eval.cli import main
from nte_eval.cluster.schedule import Schedule
from nte_eval.evaluate.run_folder import SHARDS

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
    assert_same_fits(out, one_process)  # the denoisers and adapted models the workers saved: as one process's


def test_the_schedule_fits_each_attack_of_each_setting_once():
    """The worker that starts a setting owns it; another joins only groups whose attacks are all fitted, else starts
    an unstarted setting, else waits; groups may hold different attacks (as under --shard I/N or a resume)."""
    def group(setting, start, attacks):
        return [(type("I", (), {"start": start})(), setting, j) for j in attacks]

    schedule = Schedule([*group("a", 0, [0, 1]), *group("a", 10, [0, 1]), *group("a", 20, [1, 2]),
                         *group("b", 0, [0]), *group("b", 10, [0])])
    taken = {w: schedule.take(w) for w in ("w1", "w2", "w3")}
    assert [(g[0][1], g[0][0].start) for g in taken.values() if g] == [("a", 0), ("b", 0)]
    assert taken["w3"] is None  # a and b are being fitted: w3 waits
    schedule.finished(taken["w1"])  # a's attacks 0 and 1 are fitted
    assert schedule.take("w3")[0][0].start == 10  # joins a's second group; its third needs attack 2: left to w1
    assert schedule.take("w2")[0][1] == "b"  # w2 owns b
    assert schedule.take("w1")[0][0].start == 20 and schedule.take("w1") is None and not schedule.todo


def test_three_workers_on_one_setting_fit_it_once(tmp_path, monkeypatch, capsys):
    """One setting of three shards over three workers: the owner fits, the others join once its fit is kept."""
    monkeypatch.setenv("NTE_EVAL_TEST_FITS", str(tmp_path / "fits.txt"))
    suite = _suite(tmp_path, plugins=[COUNTS_FITS], attacks=["identity", "test_counts_fits"],
                   encoders=[{"type": "nte", "psnr": 10}])
    assert _run(suite, "--out", str(tmp_path / "out"), "--workers", "3") == 0
    assert "3 worker process(es), 1 thread(s) each, for 6 item(s) in 3 group(s)" in capsys.readouterr().err
    assert len(set((tmp_path / "fits.txt").read_text().split())) == 1  # one fit, in one process
    assert len(list((tmp_path / "out" / SHARDS).glob("*.parquet"))) == 6 and not multiprocessing.active_children()


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
