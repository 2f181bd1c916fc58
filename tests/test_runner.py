"""The suite runner: attack cells, resume after a kill, worst-case summaries, sanity checks, and suite errors that
stop a run before any work."""

import json
from typing import Annotated, ClassVar

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from scipy.stats import beta, binomtest

import nte_eval.evaluate.items as items
import nte_eval.runner as runner
from nte_eval.attacks import ATTACKS, Attack
from nte_eval.data.images import load_digits
from nte_eval.errors import NTEError
from nte_eval.evaluate.checks import identity_matches_encoder, oracle_fill_restores, strength_monotone
from nte_eval.evaluate.inputs import load_models, load_suite_data
from nte_eval.evaluate.store import COLUMNS
from nte_eval.evaluate.suite import parse_suite
from nte_eval.evaluate.worst_case import worst_case
from nte_eval.models.handle import IMAGENET_MEAN, IMAGENET_STD
from nte_eval.reports.headline import headline
from nte_eval.reports.summary_files import text


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
    real = items.evaluate_cell

    def dies_on_fourth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(items, "evaluate_cell", dies_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        runner.run_suite(parse_suite(SUITE), out, progress=False, log=lambda _: None)
    monkeypatch.setattr(items, "evaluate_cell", real)
    written = sorted((out / "shards").glob("*.parquet"))
    assert len(written) == 3
    damaged = written[0].read_bytes()  # one finished item's file cut short, as a disk fault or a bad copy leaves it
    written[0].write_bytes(damaged[:len(damaged) // 2])
    with pytest.raises(NTEError, match="--resume"):
        runner.run_suite(parse_suite(SUITE), out, progress=False)
    with pytest.raises(NTEError, match="different suite"):
        runner.run_suite(parse_suite({**SUITE, "seed": 4}), out, progress=False, resume=True)
    logs = []
    runner.run_suite(parse_suite(SUITE), out, progress=False, resume=True, log=logs.append)
    assert [line for line in logs if str(written[0]) in line and "truncated or damaged" in line]
    assert [line for line in logs if "2 items already done" in line]
    assert len(list((out / "shards").glob("*.parquet"))) == 6
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
    # each value carries its exact 95% interval over n = 4 (Clopper-Pearson: beta quantiles): 3 of 4 correct is
    # anywhere from 19.4% to 99.4%
    assert wc.loc["best_single", "ci_low"] == pytest.approx(beta.ppf(0.025, 3, 2))
    assert wc.loc["best_single", "ci_high"] == pytest.approx(beta.ppf(0.975, 4, 1))
    assert (wc.ci_low <= wc.value).all() and (wc.value <= wc.ci_high).all() and wc.loc["union", "ci_high"] == 1.0
    # McNemar, paired on the same 4 samples: test_peek (0111) against identity (1000) disagrees on all 4, 3 to 1
    assert wc.loc["best_single", "p_vs_no_attack"] == pytest.approx(binomtest(1, 4, 0.5).pvalue)
    assert wc.loc["no_attack", "p_vs_no_attack"] == 1.0 and np.isnan(wc.loc["union", "p_vs_no_attack"])


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


@pytest.mark.parametrize("data,example", [
    ({"source": "imagefolder", "root": "imgs", "size": 64}, "{source: imagefolder, root: path/to/public, size: 64}"),
    ({"source": "imagefolder", "root": "imgs"}, "{source: imagefolder, root: path/to/public}."),
    ({"source": "digits", "split": "train"}, "{source: digits, split: test}."),
    ({"source": "digits", "split": "all"}, "{source: digits, split: train} with data.split: test"),
    ({"source": "photos"}, "{source: imagefolder, root: path/to/public}."),
    ({"source": "mmbench_tsv", "path": "MMBench_DEV_EN.tsv"}, "{source: imagefolder, root: path/to/public}."),
])
def test_a_suite_without_public_names_every_attack_that_needs_it(data, example):
    attacks = ["jpeg", "blind_fill", {"type": "learned_denoiser", "steps": [1, 2]}, "oracle_fill"]
    with pytest.raises(NTEError) as error:
        parse_suite({**SUITE, "data": data, "attacks": attacks})
    assert ("attacks: 'blind_fill' (knowledge 'method'), 'learned_denoiser' (knowledge 'method'), 'oracle_fill' "
            "(knowledge 'oracle') need public clean images disjoint from the evaluated ones; set `public:`, e.g. "
            f"public: {example}") in str(error.value)
    assert "jpeg" not in str(error.value) and len(str(error.value).splitlines()) == 1


def test_a_text_suite_without_public_shows_a_glue_tsv():
    with pytest.raises(NTEError, match=r"attacks: 'prior_decode' \(knowledge 'method'\) needs public clean texts "
                                       r".*e.g. public: \{source: glue_tsv, task: sst2, path: path/to/train.tsv\}"):
        parse_suite({"name": "text", "data": {"source": "glue_tsv", "task": "sst2", "path": "dev.tsv"},
                     "designated": "hf-text:x", "encoders": [{"type": "nte_tokens"}],
                     "attacks": ["argmax_decode", "prior_decode", "oracle_projection"]})


def test_public_images_must_be_disjoint(tmp_path):
    suite = parse_suite({**SUITE, "data": {"source": "digits", "split": "all", "limit": 40},
                         "public": {"source": "digits", "split": "train"}})
    with pytest.raises(NTEError, match="disjoint"):
        runner.run_suite(suite, tmp_path / "o", progress=False)


@pytest.fixture(scope="module")
def cnn_checkpoint(tmp_path_factory):
    """A timm resnet18 with a 10-class head (as if trained on 32 px digits), saved under a long path."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "experiments" / "2025-01-01" / "seed0" / "resnet18_digits.safetensors"
    path.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet18", num_classes=10).state_dict().items()},
              str(path))
    return path


def test_a_timm_cnn_trained_at_32_px_runs_on_digits_under_a_short_name(tmp_path, cnn_checkpoint):
    """Issue 15: a timm CNN (global pooling) takes the data's 32 px, no input_size needed; its display name is its
    architecture and checkpoint stem, and the terminal headline stays narrow."""
    cnn = {"timm": "resnet18", "checkpoint": str(cnn_checkpoint), "kwargs": {"num_classes": 10}}
    suite = parse_suite({"name": "cnn32", "data": {"source": "digits", "split": "test", "limit": 16},
                         "designated": "zoo:vit_null", "models": [cnn], "encoders": [{"type": "nte", "psnr": 30}]})
    results = runner.run_suite(suite, tmp_path, progress=False, log=lambda _: None)
    assert set(results.model) == {"zoo:vit_null", "resnet18@resnet18_digits"}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["data"]["shape"] == [3, 32, 32]
    assert manifest["models"]["resnet18@resnet18_digits"]["input_size"] == [3, 32, 32]
    # the accuracy is that of the checkpoint's weights on the 32 px digits
    model = timm.create_model("resnet18", num_classes=10).eval()
    model.load_state_dict(load_file(str(cnn_checkpoint)))
    digits = load_digits("test", 16)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = (model((digits.images - mean) / std).argmax(1) == digits.labels).float().mean().item()
    clean = results[(results.model == "resnet18@resnet18_digits") & (results.metric == "clean_accuracy")].value
    assert clean.iloc[0] == pytest.approx(expected)
    terminal = text(headline(tmp_path)).splitlines()  # what `nte-eval run` prints; no folder of the checkpoint
    assert not any("experiments" in line for line in terminal)
    header = next(line for line in terminal if line.strip() == "resnet18@resnet18_digits")  # the matrix's column
    assert len(header) < 60


def test_models_that_take_any_size_follow_the_data_and_fixed_ones_set_it(cnn_checkpoint):
    """Without data.size the data takes the first fixed-size model's size (else the source's own, digits 32), and a
    CNN designated model follows it."""
    cnn = {"timm": "resnet18", "checkpoint": str(cnn_checkpoint), "kwargs": {"num_classes": 10}}
    base = {"name": "sizes", "data": {"source": "digits", "split": "test", "limit": 4}, "designated": cnn,
            "encoders": [{"type": "nte"}]}
    for models, size in (([], 32), ([{**cnn, "input_size": [3, 40, 40], "name": "declared40"}], 40)):
        suite = parse_suite({**base, "models": models})
        handles = load_models(suite, "cpu")
        data = load_suite_data(suite, handles)
        assert data.images.shape[1:] == (3, size, size)
        assert handles["resnet18@resnet18_digits"].input_size == (3, size, size)
    grey = parse_suite({**base, "models": [{"timm": "resnet18", "kwargs": {"in_chans": 1, "num_classes": 10}}]})
    with pytest.raises(NTEError, match=r"model timm:resnet18 \(models\[0\]\) takes 1-channel images, but the data has "
                                       "3 channels"):
        load_suite_data(grey, load_models(grey, "cpu"))


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
    shards = tmp_path / "killed" / "shards"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(list(shards.glob("*.parquet"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(shards.glob("*.parquet")))
    assert 2 <= finished < 8
    subprocess.run([*cmd, "--out", str(tmp_path / "killed"), "--resume"], check=True, timeout=300,
                   capture_output=True)
    subprocess.run([*cmd, "--out", str(tmp_path / "whole")], check=True, timeout=300, capture_output=True)
    for name in ("results.csv", "samples.csv", "worst_case.csv"):
        a, b = pd.read_csv(tmp_path / "killed" / name), pd.read_csv(tmp_path / "whole" / name)
        pd.testing.assert_frame_equal(a.sort_values(list(a.columns)).reset_index(drop=True),
                                      b.sort_values(list(b.columns)).reset_index(drop=True))


class Corpus(Attack, register=False):
    """Records the corpus its fit sees (test attack)."""

    name = "test_corpus"
    knowledge = "method"
    seen: ClassVar[list[tuple[torch.Tensor, torch.Tensor]]] = []  # what each fit saw

    def fit(self, context):
        super().fit(context)
        Corpus.seen.append((self.context.ntes.clone(), self.context.public.images.clone()))
        return self

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_corpus_attacks_fit_on_a_fixed_seeded_subset(tmp_path):
    """fit_samples bounds the released NTEs and public images a fitting attack sees: a seeded subset, the same in
    every run, recorded in the manifest; with fewer images than the limit, all of them."""
    suite = {**SUITE, "attacks": ["test_corpus"], "fit_samples": 16}
    with ATTACKS.scope(Corpus):
        Corpus.seen.clear()
        runner.run_suite(parse_suite(suite), tmp_path / "a", progress=False, log=lambda _: None)
        runner.run_suite(parse_suite(suite), tmp_path / "b", progress=False, log=lambda _: None)
        runner.run_suite(parse_suite({**suite, "fit_samples": 4096}), tmp_path / "c", progress=False,
                         log=lambda _: None)
    per_run = len(Corpus.seen) // 3  # one fit per encoder setting
    (ntes_a, public_a), (ntes_b, public_b), (ntes_all, public_all) = Corpus.seen[::per_run]
    assert ntes_a.shape[0] == public_a.shape[0] == 16
    assert torch.equal(ntes_a, ntes_b) and torch.equal(public_a, public_b)
    assert ntes_all.shape[0] == 40 and public_all.shape[0] == len(load_digits("train"))
    assert any(torch.equal(ntes_a[0], row) for row in ntes_all)  # a subset of the released NTEs ...
    assert not torch.equal(ntes_a, ntes_all[:16])  # ... drawn at random, not the first ones
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["fit_samples"] == {"limit": 16, "ntes": 16, "public": 16}
