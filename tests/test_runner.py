"""The suite runner: attack cells, resume after a kill, worst-case summaries, sanity checks, and suite errors that
stop a run before any work."""

import json
from typing import Annotated

import pandas as pd
import pytest
import torch
from pydantic import Field

import nte_eval.runner as runner
from nte_eval.attacks import ATTACKS, Attack
from nte_eval.errors import NTEError
from nte_eval.evaluate.checks import identity_matches_encoder, oracle_fill_restores, strength_monotone
from nte_eval.evaluate.store import COLUMNS
from nte_eval.evaluate.suite import parse_suite
from nte_eval.evaluate.worst_case import worst_case


class Jitter(Attack, register=False):
    """Seeded Gaussian jitter (test attack)."""

    name = "test_jitter"
    knowledge = "none"
    strength = ("sigma", 1)
    sigma: Annotated[float, Field(ge=0)] = 0.1
    seed: int = 0

    def run(self, x: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        return x + self.sigma * torch.randn(x.shape, generator=gen)


class Peek(Attack, register=False):
    """Reads the designated model (test attack)."""

    name = "test_peek"
    knowledge = "oracle"

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture(scope="module", autouse=True)
def registered_test_attacks():
    """Jitter and Peek are registered for this module's tests only."""
    with ATTACKS.scope(Jitter, Peek):
        yield


SUITE = {"name": "resume", "seed": 3, "data": {"source": "digits", "split": "test", "limit": 40},
         "designated": "zoo:vit_null", "models": ["zoo:mlp_linear", "zoo:resnet_stem"],
         "encoders": [{"type": "nte", "psnr": [30, 0]}],
         "attacks": [{"type": "test_jitter", "sigma": [0.05, 0.3], "seed": 1}]}


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(COLUMNS[:7]).reset_index(drop=True)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    runner.run_suite(parse_suite(SUITE), out, progress=False, log=lambda _: None)
    return out


def test_cells_cover_every_encoder_and_attack_setting(full_run):
    results = pd.read_csv(full_run / "results.csv")
    # identity is added as the no-attack baseline; 2 encoder settings x 3 attack settings x 3 models.
    assert results.groupby(["encoder_params", "attack", "attack_params"]).ngroups == 6
    assert set(results.model) == {"zoo:vit_null", "zoo:mlp_linear", "zoo:resnet_stem"}
    assert {"recon_psnr", "change_psnr", "attacked_clean_accuracy"} <= set(results.metric)
    ident = results[(results.attack == "identity") & (results.metric == "change_psnr")]
    assert (ident.value > 200).all()  # identity changes nothing (PSNR of identical images is capped, not finite)
    jit = results[(results.attack == "test_jitter") & (results.metric == "recon_psnr")]
    assert jit.value.min() < 15  # sigma 0.3 jitter is far from clean


def test_killed_run_resumes_to_the_same_results(full_run, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    calls = {"n": 0}
    real = runner.evaluate_cell

    def dies_on_fourth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate_cell", dies_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        runner.run_suite(parse_suite(SUITE), out, progress=False, log=lambda _: None)
    monkeypatch.setattr(runner, "evaluate_cell", real)
    assert len((out / "cells.jsonl").read_text().splitlines()) == 3
    with open(out / "results.csv", "a") as f:  # a kill in the middle of writing the next cell's rows
        f.write('nte,"{""box"":""none"",""designated"":""zoo:vit_null"",""mo')
    with pytest.raises(NTEError, match="--resume"):
        runner.run_suite(parse_suite(SUITE), out, progress=False)
    with pytest.raises(NTEError, match="different suite"):
        runner.run_suite(parse_suite({**SUITE, "seed": 4}), out, progress=False, resume=True)
    runner.run_suite(parse_suite(SUITE), out, progress=False, resume=True, log=lambda _: None)
    resumed = pd.read_csv(out / "results.csv")
    pd.testing.assert_frame_equal(_sorted(resumed), _sorted(pd.read_csv(full_run / "results.csv")))
    for name in ("samples.csv", "worst_case.csv"):
        a, b = pd.read_csv(out / name), pd.read_csv(full_run / name)
        pd.testing.assert_frame_equal(a.sort_values(list(a.columns)).reset_index(drop=True),
                                      b.sort_values(list(b.columns)).reset_index(drop=True))


def test_worst_case_union_and_calibration():
    """Two attacks, four samples: the union counts a sample correct under either attack."""
    head = {"encoder": "nte", "encoder_params": '{"designated":"d","psnr":0}', "model": "m", "role": "unauthorized",
            "n": 4}
    results = pd.DataFrame([
        {**head, "attack": "identity", "attack_params": "{}", "metric": "accuracy", "value": 0.25},
        {**head, "attack": "identity", "attack_params": "{}", "metric": "clean_accuracy", "value": 1.0},
        {**head, "attack": "test_jitter", "attack_params": '{"sigma":0.1}', "metric": "accuracy", "value": 0.5},
        {**head, "attack": "test_peek", "attack_params": "{}", "metric": "accuracy", "value": 0.75}])
    samples = pd.DataFrame([
        {**head, "attack": "identity", "attack_params": "{}", "input": "attacked", "correct": "1000"},
        {**head, "attack": "test_jitter", "attack_params": '{"sigma":0.1}', "input": "attacked", "correct": "0110"},
        {**head, "attack": "test_peek", "attack_params": "{}", "input": "attacked", "correct": "0111"},
        *({**head, "attack": a, "attack_params": p, "input": "clean", "correct": "1110"}
          for a, p in (("identity", "{}"), ("test_jitter", '{"sigma":0.1}'), ("test_peek", "{}")))])
    levels = {"identity": "none", "test_jitter": "none", "test_peek": "oracle"}
    wc = worst_case(results, samples, lambda a, p: levels[a]).set_index("summary")
    assert wc.loc["no_attack", "value"] == 0.25 and wc.loc["clean", "value"] == 1.0
    assert wc.loc["best_single", "attack"] == "test_peek" and wc.loc["best_single", "value"] == 0.75
    assert wc.loc["best_none", "attack"] == "test_jitter" and wc.loc["best_none", "value"] == 0.5
    assert wc.loc["union", "value"] == 1.0 and wc.loc["union_clean", "value"] == 0.75
    assert "best_method" not in wc.index


def test_checks_flag_what_they_should():
    enc = ("nte", '{"designated":"d","psnr":0}')
    rows = [(*enc, "oracle_fill", "{}", "m", "unauthorized", "accuracy", 0.5, 10),
            (*enc, "identity", "{}", "m", "unauthorized", "clean_accuracy", 0.9, 10)]
    assert oracle_fill_restores(pd.DataFrame(rows, columns=COLUMNS))[0]["check"] == "oracle_fill"
    rows[0] = (*enc, "oracle_fill", "{}", "m", "unauthorized", "accuracy", 0.88, 10)
    assert oracle_fill_restores(pd.DataFrame(rows, columns=COLUMNS)) == []
    mono = [(*enc, "test_jitter", json.dumps({"sigma": s, "seed": 0}), "m", "unauthorized", "change_psnr", v, 10)
            for s, v in ((0.1, 20.0), (0.2, 25.0), (0.3, 15.0))]
    assert "not monotone" in strength_monotone(pd.DataFrame(mono, columns=COLUMNS))[0]["message"]
    mono[1] = (*mono[1][:7], 18.0, 10)
    assert strength_monotone(pd.DataFrame(mono, columns=COLUMNS)) == []
    ident = [(*enc, "identity", "{}", "d", "designated", "accuracy", 0.9, 10),
             (*enc, "identity", "{}", "d", "designated", "encoded_accuracy", 0.8, 10)]
    assert identity_matches_encoder(pd.DataFrame(ident, columns=COLUMNS))
    ident[1] = (*ident[1][:7], 0.9, 10)
    assert identity_matches_encoder(pd.DataFrame(ident, columns=COLUMNS)) == []


def test_checks_pass_on_a_real_run(full_run):
    warnings = json.loads((full_run / "warnings.json").read_text())
    assert [w["check"] for w in warnings] == ["oracle_fill"]  # only: no oracle_fill in this suite


@pytest.mark.parametrize("change,match", [
    ({"attacks": [{"type": "test_jiter"}]}, "Did you mean 'test_jitter'"),
    ({"attacks": [{"type": "test_jitter", "sigm": 1}]}, "Did you mean 'sigma'"),
    ({"attacks": [{"type": "test_jitter", "sigma": "big"}]}, "sigma: Input should be a valid number"),
    ({"attacks": [{"type": "test_jitter", "sigma": [0.1, -1]}]}, "greater than or equal to 0"),
    ({"attacks": ["test_peek"], "knowledge": ["none", "method"]}, "needs knowledge 'oracle'"),
    ({"attacks": ["test_peek"], "data": {"source": "photos"}}, "needs public clean images"),
    ({"encoders": [{"type": "nte", "mode": "sideways"}]}, "encoders[0].mode: got 'sideways'"),
    ({"plugins": ["missing_file.py"]}, "does not exist"),
    ({"attacks": [{"type": "chain", "steps": []}]}, "attacks[0]"),
    ({"attacks": [{"type": "chain", "steps": ["jpeg", {"type": "chain", "steps": ["resize"]}]}]}, "chain"),
    ({"attacks": [{"type": "chain", "steps": ["jpeg", "oracle_fill"]}], "knowledge": ["none"]}, "needs knowledge"),
])
def test_bad_attack_settings_fail_before_any_work(change, match):
    with pytest.raises(NTEError, match=match.replace("[", r"\[").replace("]", r"\]")):
        parse_suite({**SUITE, **change})


def test_public_images_must_be_disjoint(tmp_path):
    suite = parse_suite({**SUITE, "data": {"source": "digits", "split": "all", "limit": 40},
                         "public": {"source": "digits", "split": "train"}})
    with pytest.raises(NTEError, match="disjoint"):
        runner.run_suite(suite, tmp_path / "o", progress=False)


KILL_SUITE = """
name: kill
seed: 7
data: {source: digits, split: test, limit: 40}
designated: zoo:vit_null
models: [zoo:mlp_linear]
encoders: [{type: nte, psnr: [30, 0]}]
attacks:
  - {type: gaussian_noise, sigma: [0.02, 0.1], seed: 3}
  - {type: jpeg, quality: 50}
"""


def test_sigkill_at_any_point_then_resume_matches_an_uninterrupted_run(tmp_path):
    """A real kill -9 of the CLI in the middle of a run; --resume completes it to the same files."""
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "suite.yaml").write_text(KILL_SUITE)
    cmd = [sys.executable, "-m", "nte_eval.cli", "run", str(tmp_path / "suite.yaml"), "--quiet", "--threads", "1"]
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    journal = tmp_path / "killed" / "cells.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(journal.read_text().splitlines())
    assert 2 <= finished < 8
    subprocess.run([*cmd, "--out", str(tmp_path / "killed"), "--resume"], check=True, timeout=300,
                   capture_output=True)
    subprocess.run([*cmd, "--out", str(tmp_path / "whole")], check=True, timeout=300, capture_output=True)
    for name in ("results.csv", "samples.csv", "worst_case.csv"):
        a, b = pd.read_csv(tmp_path / "killed" / name), pd.read_csv(tmp_path / "whole" / name)
        pd.testing.assert_frame_equal(a.sort_values(list(a.columns)).reset_index(drop=True),
                                      b.sort_values(list(b.columns)).reset_index(drop=True))


def test_resume_refuses_a_damaged_journal_with_a_clear_error(tmp_path):
    from nte_eval.evaluate.store import ResultStore

    store = ResultStore(tmp_path, "hash")
    store.journal.write_text('["a", "b", "c", "d"]\nnot json\n["e", "f", "g", "h"]\n')
    with pytest.raises(NTEError, match="line 2 is not a journal entry.*--overwrite"):
        ResultStore(tmp_path, "hash", resume=True)
