"""Work in items (cell x shard), one checksummed file each: results do not depend on the batch size, the shard size
or how the items are split over processes (`--shard I/N` + `nte-eval merge`), and bad shard input is refused."""

import os
import re

import pandas as pd
import pytest
import torch
import yaml
from same_results import assert_same, results

from nte_eval.cli import main
from nte_eval.evaluate.run_folder import SHARDS

SUITE = {"name": "shards", "seed": 5, "data": {"source": "digits", "split": "test", "limit": 40},
         "public": {"source": "digits", "split": "train"},
         "designated": "zoo:vit_null", "models": ["zoo:mlp_linear", "zoo:resnet_stem"],
         "encoders": [{"type": "nte", "psnr": [30, 0]}],
         "attacks": ["identity", {"type": "gaussian_noise", "sigma": 0.05}, "blind_fill", "tile_average",
                     {"type": "tv_chambolle", "weight": [0.05, 0.2]}]}


def _suite(tmp_path, name, **changes) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**SUITE, **changes}))
    return str(path)


def _run(*args: str) -> int:
    return main(["run", *args, "--quiet", "--threads", "1"])


def _samples(out) -> list[tuple]:
    return sorted(map(tuple, pd.read_csv(out / "samples.csv", dtype=str).values))


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whole")
    assert _run(_suite(tmp, "suite"), "--out", str(tmp / "out"), "--batch-size", "16") == 0
    return tmp / "out"


def test_batch_size_and_shard_size_change_no_result(whole, tmp_path):
    out = tmp_path / "b50"
    assert _run(_suite(tmp_path, "small", shard_size=15), "--out", str(out), "--batch-size", "50") == 0
    assert len(list((out / SHARDS).glob("*.parquet"))) == 2 * 6 * 3  # settings x attack settings x shards
    assert_same(results(whole), results(out))
    assert _samples(whole) == _samples(out)


def test_shard_processes_then_merge_equal_one_process(whole, tmp_path, capsys):
    suite, out = _suite(tmp_path, "split", shard_size=15), tmp_path / "split"
    assert _run(suite, "--out", str(out), "--shard", "1/2", "--batch-size", "50") == 0
    assert not (out / "results.csv").exists()  # the run is not whole yet: nothing merged
    assert "nte-eval merge" in capsys.readouterr().err
    assert main(["merge", str(out)]) == 2  # names how many items are missing and which
    err = capsys.readouterr().err
    assert "items have no finished file yet" in err and "--shard I/N" in err and re.search(r"samples \d+-\d+", err)
    assert _run(suite, "--out", str(out), "--shard", "0/2", "--batch-size", "16") == 0  # completes and merges
    assert (out / "report.pdf").exists()
    b = results(out)
    assert_same(results(whole), b)
    assert _samples(whole) == _samples(out)
    # a damaged item file is named, deleted and then missing: merge refuses until its process reruns it
    victim = sorted((out / SHARDS).glob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    assert main(["merge", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and "truncated or damaged" in err and "1 of 36 items" in err
    for shard in ("0/2", "1/2"):
        assert _run(suite, "--out", str(out), "--shard", shard) == 0
    assert main(["merge", str(out)]) == 0
    assert results(out).equals(b)


@pytest.mark.parametrize("spec", ["3/2", "x", "1/0", "-1/2", "1/2/3"])
def test_a_bad_shard_is_refused_before_any_work(tmp_path, capsys, spec):
    with pytest.raises(SystemExit) as stop:
        _run(_suite(tmp_path, "suite"), "--out", str(tmp_path / "out"), f"--shard={spec}")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--shard" in err and "I/N" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_shard_refuses_overwrite_and_another_suites_folder(whole, tmp_path, capsys):
    assert _run(_suite(tmp_path, "suite"), "--out", str(whole), "--shard", "0/2", "--overwrite") == 2
    assert "--shard and --overwrite" in capsys.readouterr().err
    assert _run(_suite(tmp_path, "other", seed=6), "--out", str(whole), "--shard", "0/2") == 2
    assert "different suite" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "nothing")]) == 2
    assert "has no plan.json" in capsys.readouterr().err


def test_an_imagefolder_is_read_shard_by_shard_with_the_same_results(tmp_path):
    """An imagefolder is read from its files when a shard needs them (DataLoader workers or not): the results do not
    depend on the workers or the shard size, and equal those of the same images held in memory."""
    from PIL import Image

    from nte_eval.data.files import FileImages
    from nte_eval.data.images import load_digits, load_imagefolder

    digits = load_digits("test", limit=24)
    for i, (x, label) in enumerate(zip(digits.images, digits.labels, strict=True)):
        folder = tmp_path / "imgs" / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((x * 255).round().byte().permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    lazy = load_imagefolder(tmp_path / "imgs", size=32)
    assert isinstance(lazy.images, FileImages) and len(lazy) == 24
    eager = torch.stack([FileImages(lazy.images.paths[i:i + 1], (3, 32, 32), lazy.images.prepare)[0]
                         for i in range(24)])
    lazy.images.workers = 2
    assert torch.equal(lazy.images[3:17], eager[3:17]) and torch.equal(lazy.images[[5, 0]], eager[[5, 0]])
    data = {"source": "imagefolder", "root": str(tmp_path / "imgs"), "size": 32}
    base = {**SUITE, "data": data, "public": {"source": "digits", "split": "train"}, "attacks": SUITE["attacks"][:3]}
    runs = []
    for name, workers, shard_size in (("a", 0, 1000), ("b", 2, 7)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**base, "data": {**data, "workers": workers}, "shard_size": shard_size}))
        assert _run(str(path), "--out", str(tmp_path / name)) == 0
        runs.append(results(tmp_path / name))
    assert_same(*runs)
    assert len(list((tmp_path / "b" / SHARDS).glob("*.parquet"))) == 2 * 3 * 4


def test_the_readmes_cluster_recipe_step_by_step(whole, tmp_path, monkeypatch):
    """README, "Running on a cluster": the array's processes (as many as its --array names, each with its task id in
    the environment), then the merge job, give the results of one process."""
    import shlex
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Running on a cluster")[1].split("\n## ")[0]
    first, last = map(int, re.search(r"#SBATCH --array=(\d+)-(\d+)", section).groups())
    run = next(line for line in section.splitlines() if line.startswith("nte-eval run "))
    merge = re.search(r'--wrap "(nte-eval merge [^"]+)"', section).group(1)
    out, suite = tmp_path / "my-eval", _suite(tmp_path, "suite", shard_size=15)
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", str(last - first + 1))
    for task in range(first, last + 1):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
        args = shlex.split(os.path.expandvars(run.replace("suite.yaml", suite).replace("/shared/runs/my-eval",
                                                                                       str(out))))
        assert main(args[1:]) == 0
    assert (out / "report.pdf").is_file()  # the last process found every item finished and merged; the job again
    (out / "report.pdf").unlink()
    assert main(shlex.split(merge.replace("/shared/runs/my-eval", str(out)))[1:]) == 0
    assert (out / "report.pdf").is_file()
    assert_same(results(whole), results(out))


FLIP = '''
from nte_eval.attacks import Attack

class Flip(Attack):
    name = "test_flip"
    knowledge = "none"

    def run(self, x):
        return x.flip(-1)
'''


def test_merge_in_a_fresh_process_knows_the_suites_plugin_attacks(tmp_path, capsys):
    """The SLURM flow with a suite's own attack: `nte-eval merge` runs in a process that never loaded the suite."""
    import subprocess
    import sys

    (tmp_path / "flip.py").write_text(FLIP)
    suite = _suite(tmp_path, "plugin", plugins=["flip.py"], attacks=["identity", "test_flip"], shard_size=20)
    out = tmp_path / "out"
    for shard in ("0/2", "1/2"):
        assert _run(suite, "--out", str(out), "--shard", shard) == 0
    (out / "results.csv").unlink()
    merged = subprocess.run([sys.executable, "-m", "nte_eval.cli", "merge", str(out)], capture_output=True, text=True,
                            timeout=300)
    assert merged.returncode == 0, merged.stderr
    assert "test_flip" in set(pd.read_csv(out / "results.csv").attack)


def test_a_setting_given_twice_is_refused(tmp_path, capsys):
    suite = _suite(tmp_path, "twice", attacks=["identity", {"type": "gaussian_noise", "sigma": [0.05, 0.05]}])
    assert _run(suite, "--out", str(tmp_path / "out")) == 2
    assert "appears more than once" in capsys.readouterr().err
