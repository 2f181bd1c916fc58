"""The command line end to end: run, report, encode, zoo, and one-line errors with exit code 2."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from nte_eval.cli import main
from nte_eval.evaluate.run_folder import key_fingerprint
from nte_eval.evaluate.store import COLUMNS

SMALL_SUITE = """
name: small
seed: 5
data: {source: digits, split: test, limit: 60}
designated: zoo:vit_null
models: [zoo:resnet_stem, zoo:mlp_linear]
encoders:
  - {type: nte, psnr: [30, 0]}
"""


class Payload:
    """A pickled object that torch.load(weights_only=True) must refuse."""


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    (root / "suite.yaml").write_text(SMALL_SUITE)
    assert main(["run", str(root / "suite.yaml"), "--out", str(root / "out"), "--quiet"]) == 0
    return root / "out"


def test_run_writes_tidy_results_and_a_report(small_run):
    results = pd.read_csv(small_run / "results.csv")
    assert list(results.columns) == [*COLUMNS, "ci_low", "ci_high"]
    share = results[results.metric == "accuracy"]  # every accuracy with its exact 95% interval over n
    assert ((share.ci_low <= share.value) & (share.value <= share.ci_high)).all() and (share.ci_high > 0).all()
    assert results[results.metric == "psnr"].ci_low.isna().all()
    assert set(results.metric) >= {"clean_accuracy", "accuracy", "agreement", "psnr", "first_layer_ratio"}
    assert set(results.role) == {"designated", "unauthorized"}
    params = results.encoder_params.map(json.loads)
    assert all(p["designated"] == "zoo:vit_null" for p in params)
    assert results.encoder_params.iloc[0] == json.dumps(params.iloc[0], sort_keys=True, separators=(",", ":"))
    des = results[results.role == "designated"].pivot_table(index="encoder_params", columns="metric", values="value")
    assert (des.clean_accuracy - des.accuracy).max() <= 0.005  # exact null space: no accuracy lost
    assert des.first_layer_ratio.max() <= 1e-4 and (des.agreement == 1).all()
    unauth = results[(results.role == "unauthorized") & results.encoder_params.str.contains('"psnr":0.0')]
    acc = unauth.pivot_table(index="model", columns="metric", values="value")
    assert (acc.clean_accuracy - acc.accuracy).min() > 0.25  # at 0 dB every other model loses > 25 points
    assert (results[results.metric != "probe_psnr"].n == 60).all()  # the probe: 64 public images of its own
    manifest = json.loads((small_run / "manifest.json").read_text())
    assert manifest["key_fingerprint"] == key_fingerprint(5) and "seed" not in manifest["config"]
    assert len(manifest["config_hash"]) == 16 and "torch" in manifest["environment"]
    assert manifest["timings"]["total_seconds"] > 0
    assert (small_run / "report.pdf").stat().st_size > 1000
    assert pd.read_parquet(small_run / "results.parquet").shape == results.shape


def test_report_needs_only_the_three_core_files(small_run, tmp_path, capsys):
    """No certification, spectra or example images (a suite without them, or files not copied): those pages are
    left out, the rest is rebuilt."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("results.csv", "manifest.json", "worst_case.csv"):
        shutil.copy(small_run / name, copy / name)
    code, out, _ = run_cli(["report", copy], capsys)
    assert code == 0 and (copy / "report.pdf").is_file() and (copy / "summary.md").is_file()
    assert "Verdicts:" in out and "resnet_stem" in out
    (copy / "worst_case.csv").unlink()
    code, _, err = run_cli(["report", copy], capsys)
    assert code == 2 and "worst_case.csv" in err and "--resume" in err
    code, _, err = run_cli(["report", tmp_path / "nothing"], capsys)
    assert code == 2 and "results.csv" in err


def test_encode_writes_storable_pngs_without_the_key(tmp_path, capsys):
    out = tmp_path / "nte"
    code, stdout, _ = run_cli(["encode", "--model", "zoo:vit_null", "--data", "digits", "--limit", "5", "--out", out,
                               "--key", "secret-key", "--psnr", "25"], capsys)
    assert code == 0 and "png" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert "key" not in manifest and "secret-key" not in (out / "manifest.json").read_text()
    assert manifest["format"] == "png" and len(manifest["files"]) == 5 and manifest["subspace"]["exact"]
    assert all(abs(f["psnr"] - 25) < 1.0 for f in manifest["files"])
    from nte_eval.data.images import load_digits
    from nte_eval.models.load import load_model

    handle = load_model("zoo:vit_null")
    clean = load_digits("test", limit=5).images
    png = torch.stack([torch.from_numpy(np.array(Image.open(out / f["file"]))).permute(2, 0, 1).float() / 255
                       for f in manifest["files"]])
    ratio = (handle.first_layer_response(png) - handle.first_layer_response(clean)).flatten(1).norm(dim=1) \
        / handle.first_layer_response(clean).flatten(1).norm(dim=1)
    assert torch.allclose(ratio, torch.tensor([f["first_layer_ratio"] for f in manifest["files"]]), rtol=1e-3)
    assert (handle.logits(png).argmax(1) == handle.logits(clean).argmax(1)).all()


def encode(out, capsys, *key_args):
    """``nte-eval encode`` of 3 digits into ``out`` with the key given by ``key_args``: (code, stdout, stderr)."""
    return run_cli(["encode", "--model", "zoo:vit_null", "--data", "digits", "--limit", "3", "--out", out,
                    *key_args], capsys)


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_save_key_writes_an_owner_only_file_outside_the_release(tmp_path, capsys):
    key = "K3y-Secr3t-77"
    release = tmp_path / "release"
    code, out, err = encode(release, capsys, "--key", key, "--save-key")
    saved = tmp_path / "release.key"
    assert code == 0 and saved.read_text() == key + "\n" and (saved.stat().st_mode & 0o777) == 0o600
    assert str(saved) in out and key not in out + err
    assert not [p for p in release.rglob("*") if key.encode() in p.read_bytes()]
    assert json.loads((release / "manifest.json").read_text())["key_fingerprint"] == key_fingerprint(key)
    # the saved file is a --key-file: the same key, the same NTEs bit for bit
    assert encode(tmp_path / "again", capsys, "--key-file", saved)[0] == 0
    assert pngs(tmp_path / "again") == pngs(release) and len(pngs(release)) == 3
    code, _, err = encode(release, capsys, "--key", "another-key", "--save-key")
    assert code == 2 and "holds another key" in err and saved.read_text() == key + "\n"


def test_the_key_from_a_file_or_the_environment(tmp_path, capsys, monkeypatch):
    key = "K3y-Secr3t-77"
    (tmp_path / "key.txt").write_text(key + "\n")
    monkeypatch.setenv("NTE_EVAL_KEY", key)
    monkeypatch.setenv("MY_KEY", key)
    runs = {"flag": ["--key", key], "file": ["--key-file", tmp_path / "key.txt"], "default": [],
            "named": ["--key-env", "MY_KEY"]}
    for name, args in runs.items():
        code, out, err = encode(tmp_path / name, capsys, *args)
        assert code == 0 and key not in out + err and key_fingerprint(key) in out
    assert all(pngs(tmp_path / name) == pngs(tmp_path / "flag") for name in runs)
    monkeypatch.setenv("NTE_EVAL_KEY", "other")
    assert encode(tmp_path / "other", capsys)[0] == 0 and pngs(tmp_path / "other") != pngs(tmp_path / "flag")


def test_run_reads_the_key_from_a_file_or_the_environment(tmp_path, capsys, monkeypatch):
    key = "K3y-Secr3t-77"
    suite = SMALL_SUITE.replace("seed: 5", "seed: 0").replace("limit: 60", "limit: 30")
    (tmp_path / "in_suite.yaml").write_text(suite.replace("seed: 0", f"seed: {key}"))
    (tmp_path / "suite.yaml").write_text(suite)
    (tmp_path / "key.txt").write_text(key + "\n")
    monkeypatch.setenv("MY_KEY", key)
    runs = {"in_suite": ["in_suite.yaml"], "file": ["suite.yaml", "--key-file", tmp_path / "key.txt"],
            "env": ["suite.yaml", "--key-env", "MY_KEY"]}
    for name, (file, *extra) in runs.items():
        code, out, err = run_cli(["run", tmp_path / file, "--out", tmp_path / name, "--quiet", *extra], capsys)
        assert code == 0 and key not in out + err
    manifests = {name: json.loads((tmp_path / name / "manifest.json").read_text()) for name in runs}
    assert {m["key_fingerprint"] for m in manifests.values()} == {key_fingerprint(key)}
    assert len({m["config_hash"] for m in manifests.values()}) == 1  # the same key: --resume accepts either way
    results = {name: pd.read_csv(tmp_path / name / "results.csv") for name in runs}
    pd.testing.assert_frame_equal(results["file"], results["in_suite"])
    pd.testing.assert_frame_equal(results["env"], results["in_suite"])
    assert not any(key.encode() in p.read_bytes() for p in (tmp_path / "file").rglob("*") if p.is_file())


def test_an_empty_or_missing_key_exits_2(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty.txt").write_text("\n")
    monkeypatch.setenv("EMPTY_KEY", "")
    monkeypatch.delenv("NTE_EVAL_KEY", raising=False)
    for args, match in ((["--key", ""], "empty"), (["--key-file", tmp_path / "empty.txt"], "empty"),
                        (["--key-env", "EMPTY_KEY"], "empty"), ([], "NTE_EVAL_KEY"),
                        (["--key-file", tmp_path / "missing.txt"], "no such file")):
        code, _, err = encode(tmp_path / "o", capsys, *args)
        assert code == 2 and match in err and err.startswith("nte-eval: error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_encode_unboxed_writes_npy_and_says_why(tmp_path, capsys):
    code, stdout, _ = run_cli(["encode", "--model", "zoo:vit_null", "--data", "digits", "--limit", "3", "--out",
                               tmp_path / "o", "--key", "1", "--box", "none", "--no-quantize", "--psnr", "0"], capsys)
    assert code == 0 and "not images" in stdout
    files = sorted((tmp_path / "o").glob("*.npy"))
    assert len(files) == 3 and np.load(files[0]).max() > 1


def test_encode_a_folder_with_a_corrupt_image(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(folder / "a.png")
    code, _, _ = run_cli(["encode", "--model", "zoo:vit_null", "--data", folder, "--out", tmp_path / "o1",
                          "--key", "1"], capsys)
    assert code == 0 and (tmp_path / "o1" / "a.png").is_file()
    (folder / "b.png").write_bytes(b"definitely not a png")
    code, _, err = run_cli(["encode", "--model", "zoo:vit_null", "--data", folder, "--out", tmp_path / "o2",
                            "--key", "1"], capsys)
    assert code == 2 and "b.png" in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["encode", "--model", "zoo:vit_null", "--data", empty, "--out", tmp_path / "o3",
                            "--key", "1"], capsys)
    assert code == 2 and "no image files" in err


@pytest.mark.parametrize("suite,match", [
    ("name: x\ndesignated: [zoo:vit_null\n", "malformed YAML"),
    ("name: x\ndesignated: zoo:vit_nul\nencoders: [{type: nte}]\n", "Did you mean 'vit_null'"),
    ("name: x\ndesignated: zoo:vit_null\nencoders: [{type: nte, psnr: [30, abc]}]\n", "encoders[0].psnr"),
    ("name: x\ndesignated: zoo:vit_null\nencoders: [{type: nte, box: maybe}]\n", "'none', 'clip' or 'project'"),
    ("name: x\ndesignated: zoo:vit_null\nencoders: [{type: nte, psnr: 1000}]\n", "encoders[0].psnr"),
    ("name: x\ndesignated: zoo:vit_null\nencodrs: [{type: nte}]\n", "Did you mean 'encoders'"),
    ("name: x\ndesignated: timm:resnet18@missing.pth\nencoders: [{type: nte}]\n", "does not exist"),
    ("name: x\ndesignated: zoo:vit_null\ndata: {source: digits, size: 64}\nencoders: [{type: nte}]\n",
     "takes only 3x32x32 images, but the data is 3x64x64 (data.size)"),
    ("name: x\ndesignated: zoo:vit_null\ndata: {source: imagefolder, root: /nonexistent, size: 32}\n"
     "encoders: [{type: nte}]\n", "not a folder"),
])
def test_bad_suites_give_one_line_and_exit_2(tmp_path, capsys, suite, match):
    path = tmp_path / "bad.yaml"
    path.write_text(suite)
    code, _, err = run_cli(["run", path, "--out", tmp_path / "out", "--quiet"], capsys)
    assert code == 2
    assert match in err and err.startswith("nte-eval: error:") and len(err.strip().splitlines()) == 1


def test_unsafe_checkpoint_is_refused(tmp_path, capsys):
    import timm

    torch.save({"model": timm.create_model("resnet18").state_dict(), "extra": Payload()}, tmp_path / "evil.pth")
    code, _, err = run_cli(["encode", "--model", f"timm:resnet18@{tmp_path / 'evil.pth'}", "--data", "digits",
                            "--out", tmp_path / "o", "--key", "1"], capsys)
    assert code == 2 and "not safe" in err


def test_zoo_list_json(capsys):
    code, out, _ = run_cli(["zoo", "list", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and len(rows) == 10
    for row in rows:
        assert {"name", "arch", "kernel", "stride", "exact_null_dim", "test_accuracy"} <= set(row)
        assert row["test_accuracy"] >= (0.8 if row["name"].startswith("tex_") else 0.95)  # textures are harder


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "nte-eval"  # installed beside the interpreter by `pip install -e .`
    assert exe.is_file()
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "run" in proc.stdout and "encode" in proc.stdout


PROGRESS_SUITE = SMALL_SUITE.replace("limit: 60", "limit: 40") + """
attacks: [identity, {type: learned_denoiser, steps: 30, pairs: 64, width: 8}]
certify: {fidelity: true, degradation: true, lipschitz: [product, local], psnr: [30], pairs: designated,
          local_samples: 2}
"""


def test_progress_covers_training_certification_and_the_report(tmp_path, capsys):
    (tmp_path / "suite.yaml").write_text(PROGRESS_SUITE)
    args = ["run", tmp_path / "suite.yaml", "--out", tmp_path / "out", "--threads", "1"]
    code, _, err = run_cli(args, capsys)
    assert code == 0
    err = err.replace("\r", "\n")
    # learned_denoiser shows its training pairs and steps (twice: once per encoder setting)
    assert len(re.findall(r"learned_denoiser: training pairs: .*\| 0/16 ", err)) == 2
    assert len(re.findall(r"learned_denoiser: training: .*\| 0/30 ", err)) == 2
    # the certification: one bar per designated model (1 measured setting, 2 Lipschitz sources), one for the pairs
    assert re.search(r"certify zoo:vit_null: .*\| 0/3 ", err) and re.search(r"degradation pairs: .*\| 0/2 ", err)
    # one overall bar whose total counts them all: 2 settings x 2 attacks = 4 cells, 3 certification steps,
    # 2 degradation pairs, 1 report
    totals = {int(t) for t in re.findall(r"run: .*\| \d+/(\d+) ", err)}
    assert totals == {4 + 3 + 2 + 1}
    assert re.search(r"run: 100%.*\| 10/10 ", err)
    assert re.search(r"run: .*\| 7/10 ", err)  # the certification's steps come after the cells
    # resumed: the journalled cells and the certification count as done from the start; only the report is left
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0
    assert re.search(r"run:  90%.*\| 9/10 \[00:00<\?", err.replace("\r", "\n"))
