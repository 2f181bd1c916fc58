"""Outputs to trust: --overwrite keeps the previous run until the new one is complete, every file is written under a
temporary name and renamed (a kill or an error never leaves half a file), and no run file, report, log or output
holds the NTE key (only its fingerprint)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nte_eval.cli import main
from nte_eval.evaluate.run_folder import SHARDS, key_fingerprint
from nte_eval.evaluate.suite import parse_suite
from nte_eval.reports import pdf as report_pdf

KEY = "K3y-Secr3t-77"
SUITE = f"""
name: trust
seed: {KEY}
data: {{source: digits, split: test, limit: 16}}
designated: zoo:vit_null
models: [zoo:mlp_linear]
encoders: [{{type: nte, psnr: 30}}]
"""
# another suite, with a few cells, so that a kill lands in the middle of the run
LONGER = SUITE.replace("psnr: 30", "psnr: 20") + "attacks: [{type: gaussian_noise, sigma: [0.02, 0.05, 0.1]}]\n"
CLI = [sys.executable, "-m", "nte_eval.cli"]


def files(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def wait_for(proc: subprocess.Popen, ready, what: str) -> None:
    """Poll until ``ready()``; fail if the process ends first."""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.005)
    assert proc.poll() is None and ready(), f"the process ended before {what}"


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def pdf_text(path: Path) -> str:
    """The PDF's text (pdftotext); skips without poppler-utils, or fails where NTE_EVAL_REQUIRE_PDFTOPPM is set."""
    if shutil.which("pdftotext") is None:
        if os.environ.get("NTE_EVAL_REQUIRE_PDFTOPPM"):
            pytest.fail("pdftotext is missing: install Debian's poppler-utils (.ci/run does).")
        pytest.skip("pdftotext (poppler-utils) is not installed")
    return subprocess.run(["pdftotext", str(path), "-"], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A finished run of SUITE by the real command, with its stdout and stderr."""
    root = tmp_path_factory.mktemp("good")
    (root / "suite.yaml").write_text(SUITE)
    done = subprocess.run([*CLI, "run", str(root / "suite.yaml"), "--out", str(root / "out"), "--quiet",
                           "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return root / "out", done


@pytest.fixture
def previous(good_run, tmp_path) -> Path:
    """A copy of the good run, with a file of the user's own in it."""
    out = tmp_path / "out"
    shutil.copytree(good_run[0], out)
    (out / "notes.txt").write_text("mine")
    return out


def test_overwrite_killed_mid_run_keeps_the_previous_run_and_says_where(previous, tmp_path, capsys):
    before = files(previous)
    (tmp_path / "longer.yaml").write_text(LONGER)
    new = tmp_path / "out.new"
    cmd = [*CLI, "run", str(tmp_path / "longer.yaml"), "--out", str(previous), "--quiet", "--threads", "1"]
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen([*cmd, "--overwrite"], stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        wait_for(proc, lambda: len(list((new / SHARDS).glob("*.parquet"))) >= 1, "its first item was written")
        kill(proc)
    assert files(previous) == before  # byte for byte, the user's file too
    log = (tmp_path / "log.txt").read_text()
    assert f"the previous run stays untouched in {previous}" in log and str(new) in log and KEY not in log
    # the unfinished run is never deleted unasked: the next --overwrite names it and stops
    assert main([*cmd[3:], "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert str(new) in err and "--resume" in err and len(err.strip().splitlines()) == 1
    assert files(previous) == before
    shutil.rmtree(new)
    assert main([*cmd[3:], "--overwrite"]) == 0
    assert f"the previous run in {previous} is replaced" in capsys.readouterr().err
    manifest = json.loads((previous / "manifest.json").read_text())
    assert manifest["config"]["encoders"] == [{"type": "nte", "psnr": 20}] and manifest["status"] == "complete"
    assert (previous / "notes.txt").read_text() == "mine"
    assert not new.exists() and not (tmp_path / "out.old").exists()


def test_an_empty_sweep_leaves_the_previous_run_untouched(previous, tmp_path, capsys):
    before = files(previous)
    (tmp_path / "empty.yaml").write_text(SUITE.replace("psnr: 30", "psnr: []"))
    assert main(["run", str(tmp_path / "empty.yaml"), "--out", str(previous), "--overwrite", "--quiet"]) == 2
    assert "psnr" in capsys.readouterr().err
    assert files(previous) == before and not (tmp_path / "out.new").exists()


def test_report_killed_while_writing_keeps_the_old_report(previous):
    before = files(previous)
    proc = subprocess.Popen([*CLI, "report", str(previous)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for(proc, lambda: any(previous.glob("report.partial*.pdf")), "it started writing the PDF")
    kill(proc)
    after = files(previous)
    assert after["report.pdf"] == before["report.pdf"]
    # every other file is the old one or the whole new one (the same, rebuilt from the same files), never half
    assert {k: v for k, v in after.items() if "partial" not in k} == before


def test_an_error_while_writing_the_report_leaves_no_half_file_and_keeps_the_previous_run(previous, tmp_path,
                                                                                           monkeypatch):
    before = files(previous)

    def fails_on_third_page(self, figure=None, **kwargs):
        if len(self.kinds) == 2:
            raise RuntimeError("disk full")
        real(self, figure, **kwargs)

    real = report_pdf.ReportPages.savefig
    monkeypatch.setattr(report_pdf.ReportPages, "savefig", fails_on_third_page)
    with pytest.raises(RuntimeError, match="disk full"):
        report_pdf.write_report(previous)
    assert files(previous) == before  # the old report intact, and no partial file left behind
    (tmp_path / "longer.yaml").write_text(LONGER)
    with pytest.raises(RuntimeError, match="disk full"):
        main(["run", str(tmp_path / "longer.yaml"), "--out", str(previous), "--overwrite", "--quiet"])
    assert files(previous) == before  # the new run's report failed: it never replaced the previous run
    new = files(tmp_path / "out.new")
    assert "results.csv" in new and "report.pdf" not in new and not [k for k in new if "partial" in k]


def test_every_run_file_is_written_under_a_temporary_name_and_renamed(tmp_path, monkeypatch, capsys):
    """The item files under shards/ too (their checksum, in the name, is known only once they are written)."""
    renamed = []
    real = os.replace

    def records(src, dst):
        renamed.append(Path(dst).resolve())
        real(src, dst)

    monkeypatch.setattr(os, "replace", records)
    (tmp_path / "suite.yaml").write_text(SUITE)
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "suite.yaml"), "--out", str(out), "--quiet"]) == 0
    written = {p.resolve() for p in out.rglob("*") if p.is_file()}
    assert written <= set(renamed) and len(written) > 10
    assert not [p for p in written if "partial" in p.name]


def test_no_file_report_or_output_holds_the_key(good_run):
    out, done = good_run
    holding = [name for name, data in files(out).items() if KEY.encode() in data]
    assert not holding, f"the key is in {holding}"
    assert KEY not in done.stdout and KEY not in done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["key_fingerprint"] == key_fingerprint(KEY) and "seed" not in manifest["config"]
    text = pdf_text(out / "report.pdf")
    assert KEY not in text and f"key fingerprint {key_fingerprint(KEY)}" in text


def test_another_key_changes_the_config_hash_and_resume_refuses_it(previous, tmp_path, capsys):
    other = SUITE.replace(KEY, "another-key")
    assert parse_suite(yaml.safe_load(other)).config_hash() != parse_suite(yaml.safe_load(SUITE)).config_hash()
    assert key_fingerprint("another-key") != key_fingerprint(KEY)
    (tmp_path / "other.yaml").write_text(other)
    assert main(["run", str(tmp_path / "other.yaml"), "--out", str(previous), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "different suite" in err and KEY not in err and "another-key" not in err
