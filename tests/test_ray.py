"""`--executor ray`: the suite's items on a Ray cluster (a local one started in this process, and a real one started
with `ray start --head`) give the results of one process, each setting's kept fits made once; a worker killed
mid-group is retried; bad input is clear."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from same_results import assert_same, assert_same_fits, results

from nte_eval.cli import main

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")

SUITE = {"name": "ray", "seed": 5, "data": {"source": "digits", "split": "test", "limit": 30},
         "public": {"source": "digits", "split": "train"}, "designated": "zoo:vit_null",
         "models": ["zoo:mlp_linear", "zoo:resnet_stem"], "encoders": [{"type": "nte", "psnr": [30, 0]}],
         "attacks": ["identity", {"type": "gaussian_noise", "sigma": 0.05}, "blind_fill"], "shard_size": 10}
DENOISER = {"type": "learned_denoiser", "steps": 20, "pairs": 64, "width": 8}  # a fit the driver keeps
PLUGINS = Path(__file__).parent / "plugins"
COUNTS_FITS, DIES_ONCE = str(PLUGINS / "counts_fits.py"), str(PLUGINS / "dies_once.py")  # see their docstrings
TENT = {"type": "tent", "epochs": 1}  # a model attack: each actor adapts or restores the unauthorized models

def _write(tmp_path: Path, name: str, **changes) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**SUITE, **changes}))
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def suite_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray")
    plain = _write(tmp, "plain")
    dying = _write(tmp, "dying", plugins=[DIES_ONCE, COUNTS_FITS], encoders=[{"type": "nte", "psnr": 0}],
                   attacks=[*SUITE["attacks"], "test_dies_once", DENOISER, TENT, "test_counts_fits"])
    return tmp, plain, dying


def test_a_local_cluster_gives_one_processs_results_and_retries_a_killed_worker(suite_files, monkeypatch):
    tmp, plain, dying = suite_files
    marker = tmp / "marker"
    monkeypatch.setenv("NTE_EVAL_TEST_MARKER", str(marker))
    monkeypatch.setenv("NTE_EVAL_TEST_FITS", str(tmp / "fits-one.txt"))
    marker.write_text("no death in the reference run")
    assert main(["run", dying, "--out", str(tmp / "one"), "--quiet", "--threads", "1"]) == 0
    marker.unlink()
    counted = tmp / "fits.txt"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"NTE_EVAL_TEST_MARKER": str(marker), "NTE_EVAL_TEST_FITS": str(counted)}})
    try:
        assert main(["run", dying, "--out", str(tmp / "ray"), "--quiet", "--executor", "ray"]) == 0
    finally:
        ray.shutdown()
    assert marker.read_text() == "died"  # a worker process really died mid-group, and its group was retried
    # one setting of three shards on two actors: the second waits for the first's fits, joins with them, fits nothing
    assert len(counted.read_text().split()) == 1
    assert_same(results(tmp / "one"), results(tmp / "ray"))
    assert len(list((tmp / "ray" / "shards").glob("*.parquet"))) == 7 * 3
    # the denoiser the actors trained and the models tent adapted (per unauthorized model; mlp_linear's says "not
    # applicable") were sent to the driver and kept: as made here
    states = assert_same_fits(tmp / "ray", tmp / "one")
    assert sorted(next(iter(state)) for state in states) == ["changed", "mean", "net", "status"]


def test_the_cli_on_a_cluster_started_with_ray_start(suite_files):
    tmp, plain, _ = suite_files
    assert main(["run", plain, "--out", str(tmp / "plain-one"), "--quiet", "--threads", "1"]) == 0
    port = _free_port()
    ray_cli = Path(sys.executable).with_name("ray")
    subprocess.run([str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True, timeout=120)
    try:
        done = subprocess.run([sys.executable, "-m", "nte_eval.cli", "run", plain, "--out", str(tmp / "plain-ray"),
                               "--quiet", "--executor", "ray", "--address", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, timeout=120)
    assert_same(results(tmp / "plain-one"), results(tmp / "plain-ray"))


def test_bad_ray_input_is_a_clear_error(suite_files, capsys, monkeypatch):
    tmp, plain, _ = suite_files
    started = time.time()
    assert main(["run", plain, "--out", str(tmp / "x"), "--executor", "ray", "--address",
                 f"127.0.0.1:{_free_port()}"]) == 2
    err = capsys.readouterr().err
    assert "no Ray head node answers there" in err and "ray start --head" in err and time.time() - started < 30
    assert main(["run", plain, "--out", str(tmp / "x"), "--address", "127.0.0.1:1"]) == 2
    assert "--address goes with --executor ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["run", plain, "--out", str(tmp / "y"), "--executor", "ray"]) == 2
    assert 'pip install -e ".[ray]"' in capsys.readouterr().err
