"""Fidelity certificates and the suite's certify step, on real zoo models and real digits."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from torch import nn

from nte_eval.certify.degradation import degradation_warnings, rank_correlation
from nte_eval.certify.fidelity import certificate_rows, measure, summarize, violations
from nte_eval.certify.lipschitz import Float64Network, LipschitzBound, lipschitz_bounds, product_bound
from nte_eval.cli import main
from nte_eval.data.images import load_digits
from nte_eval.encoders.nte import NTEEncoder
from nte_eval.errors import NTEError
from nte_eval.evaluate.suite import parse_suite
from nte_eval.models.handle import ModelHandle
from nte_eval.models.zoo import load_zoo_model
from nte_eval.runner import run_suite


@pytest.fixture(scope="module")
def digits():
    return load_digits("test", limit=48)


def test_single_linear_layer_bound_is_exact():
    """f = W2 · (W1 D⁻¹ x): L = ‖W2‖₂, and a perturbation whose first-layer change is W2's top right singular
    vector changes the logits by exactly L · ‖ΔA‖ (the auto_LiRPA-style closed-form check)."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(48, 20), nn.Linear(20, 5))
    handle = ModelHandle.from_module(module, "1", (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), (3, 4, 4))
    bound = product_bound(handle)
    assert bound.status == "certified"
    w2 = module[2].weight.detach().double()
    assert bound.value == pytest.approx(float(torch.linalg.matrix_norm(w2, 2)), rel=1e-5)
    v = torch.linalg.svd(w2).Vh[0]  # top right singular vector of W2 in first-layer output space
    delta = torch.linalg.pinv(handle.pixel_operator()) @ v  # pixel perturbation with A-change exactly v
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64) * 0.5 + 0.25
    x_nte = x + 0.01 * delta.view(1, 3, 4, 4)
    m = measure(Float64Network(handle), x, x_nte, batch=4)
    rows = certificate_rows(m, torch.tensor([0]), bound, {"designated": "lin"})
    assert rows.measured_change[0] == pytest.approx(rows.bound[0], rel=1e-5)
    assert rows.first_layer_change[0] == pytest.approx(0.01, rel=1e-9)


def test_certified_samples_keep_their_prediction_on_zoo_models(digits):
    """Real NTEs (exact-subspace float, and storable 8-bit ones that leave the subspace) on two designated models:
    every certified source holds on every sample, and certified accuracy never exceeds the NTE accuracy."""
    for name in ("resnet_nullstem", "mlp_linear"):
        handle = load_zoo_model(name)
        net = Float64Network(handle)
        bounds = lipschitz_bounds(net, ["product", "lipsdp", "local"], digits.images[:4], radius=1.0, seed=0)
        assert bounds["product"].status == "certified"
        for params in ({"psnr": 0.0}, {"psnr": 40.0, "box": "project", "quantize": True}):
            enc = NTEEncoder(handle, **params).fit()
            x_nte = enc.encode(digits.images, key=0).images
            m = measure(net, digits.images, x_nte)
            for bound in bounds.values():
                if bound.value is None:
                    continue
                rows = certificate_rows(m, digits.labels, bound, {"designated": name})
                s = summarize(rows)
                if bound.status != "certified":  # an estimate never certifies anything
                    assert not rows.certified.any() and "estimated_accuracy" in s
                    continue
                assert s["cert_pass_rate"] == 1.0, (name, params, bound)
                assert violations(rows).empty
                assert (rows.measured_change <= rows.bound + 1e-9 * (1 + rows.bound)).all()
                assert (rows.prediction_kept[rows.certified]).all()
                assert s["certified_accuracy"] <= (rows.prediction_kept & rows.clean_correct).mean() + 1e-12
                if params["psnr"] == 0.0:
                    # exact-subspace NTEs: the first layer barely moves, so nearly every sample is certified
                    assert s["certified_fraction"] > 0.9, (name, bound, s)


def test_a_wrong_certified_bound_is_caught(digits):
    """A 'certified' constant far below the truth must show up as failing certificates, not pass silently."""
    handle = load_zoo_model("mlp_linear")
    x_nte = NTEEncoder(handle, psnr=30.0, box="project", quantize=True).fit().encode(digits.images, key=0).images
    m = measure(Float64Network(handle), digits.images, x_nte)
    wrong = LipschitzBound("product", "certified", 1e-6, "deliberately wrong", 0.0)
    rows = certificate_rows(m, digits.labels, wrong, {"designated": "mlp"})
    assert summarize(rows)["cert_pass_rate"] < 1.0
    assert not violations(rows).empty


SUITE = {
    "name": "certify-test", "seed": 0,
    "data": {"source": "digits", "split": "test", "limit": 24},
    "designated": ["zoo:mlp_linear", "zoo:vit_null"],
    "models": ["zoo:convnext_patchify"],
    "encoders": [{"type": "nte", "psnr": 30}, {"type": "nte", "psnr": 30, "box": "project", "quantize": True,
                                                "designated": "zoo:mlp_linear"}],
    "certify": {"psnr": [40, 10], "degradation_psnr": 10, "lipschitz": ["product", "lipsdp", "local"],
                "local_samples": 4},
}


def test_certify_command_writes_every_output_and_resumes(tmp_path, capsys):
    path = tmp_path / "suite.yaml"
    path.write_text(json.dumps(SUITE))
    out = tmp_path / "run"
    assert main(["certify", str(path), "--out", str(out), "--quiet", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "Fidelity certificates" in printed and "Spearman rho" in printed
    certs = pd.read_csv(out / "certificates.csv")
    # 2 settings x 2 PSNRs for mlp_linear, 1 x 2 for vit_null; 24 samples per certified/estimated source
    sources = pd.read_csv(out / "lipschitz.csv")
    usable = sources[sources.status != "refused"]
    refused = sources[sources.status == "refused"]
    assert set(refused.model) == {"zoo:vit_null"} and refused.detail.str.contains("attention|LayerNorm").all()
    expected = sum(24 * (4 if m == "zoo:mlp_linear" else 2) for m in usable.model)
    assert len(certs) == expected
    assert set(certs.psnr) == {40.0, 10.0}
    assert certs[certs.lipschitz_status == "certified"].passed.all()
    results = pd.read_csv(out / "results.csv", keep_default_na=False)
    summary = results[results.attack == "certify"]
    certified = summary.attack_params.map(lambda p: json.loads(p)["status"]) == "certified"
    assert set(summary[certified].metric) == {"cert_pass_rate", "certified_accuracy", "certified_fraction",
                                              "bound_tightness"}
    assert set(summary[~certified].metric) == {"estimate_pass_rate", "estimated_accuracy", "estimated_fraction",
                                               "bound_tightness"}
    assert (summary[certified & (summary.metric == "cert_pass_rate")].value.astype(float) == 1.0).all()
    pairs = pd.read_csv(out / "angles.csv")
    assert len(pairs) == 3 * 2  # pairs: all -> every evaluated model against the two others
    assert {"angle_min", "angle_median", "misalignment", "energy_predicted", "energy_measured",
            "accuracy_drop"} <= set(pairs)
    assert pairs.energy_agrees.all() and pairs.lower_bound_holds.all()
    degradation = json.loads((out / "certify.json").read_text())["degradation"]
    assert degradation["pairs"] == 6 and degradation["energy_agree"] == 6 and degradation["lower_bound_holds"] == 6
    assert degradation["spearman_misalignment"]["pairs"] == 3  # symmetric score: unordered pairs
    assert degradation["spearman_predicted_energy"]["pairs"] == 6
    assert not math.isnan(degradation["spearman_predicted_energy"]["rho"])
    from matplotlib.backends.backend_pdf import PdfPages

    from nte_eval.reports.certify_pages import degradation_page, fidelity_page

    with PdfPages(tmp_path / "pages.pdf") as pdf:
        fidelity_page(pdf, certs)
        degradation_page(pdf, pairs, degradation["spearman_misalignment"], degradation["psnr"])
        assert pdf.get_pagecount() == 2
    # a rerun into the same folder is refused; --resume finds the journalled certification and keeps its rows
    assert main(["certify", str(path), "--out", str(out), "--quiet"]) == 2
    before = (out / "results.csv").read_text()
    assert main(["certify", str(path), "--out", str(out), "--quiet", "--resume"]) == 0
    assert (out / "results.csv").read_text() == before


def test_failing_certificate_fails_the_run_loudly_but_keeps_the_files(tmp_path, monkeypatch):
    import nte_eval.certify.run as certify_run

    wrong = {"product": LipschitzBound("product", "certified", 1e-9, "deliberately wrong", 0.0)}
    monkeypatch.setattr(certify_run, "lipschitz_bounds", lambda *a, **k: wrong)
    suite = parse_suite({**SUITE, "designated": "zoo:mlp_linear", "certify": {"degradation": False,
                                                                               "lipschitz": ["product"]}})
    with pytest.raises(NTEError, match="bug in nte-eval"):
        run_suite(suite, tmp_path, progress=False, attacks=False)
    assert (tmp_path / "certificates.csv").exists()
    assert json.loads((tmp_path / "warnings.json").read_text())[0]["check"] == "certificate"


def test_certify_section_validation(tmp_path):
    assert parse_suite({**SUITE, "certify": True}).certify.lipschitz == ["product", "lipsdp", "local"]
    assert parse_suite({**SUITE, "certify": False}).certify is None
    with pytest.raises(NTEError, match=r"certify.lipschitz\[0\].*allowed.*product"):
        parse_suite({**SUITE, "certify": {"lipschitz": ["power"]}})
    with pytest.raises(NTEError, match="certify.*unknown key 'fidelty'"):
        parse_suite({**SUITE, "certify": {"fidelty": True}})
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps({k: v for k, v in SUITE.items() if k != "certify"}))
    assert main(["certify", str(path), "--out", str(tmp_path / "o")]) == 2


def test_symmetric_score_is_correlated_over_unordered_pairs():
    pairs = pd.DataFrame({"designated": ["a", "b", "a", "c", "b", "c"], "model": ["b", "a", "c", "a", "c", "b"],
                          "misalignment": [0.1, 0.1, 0.5, 0.5, 0.9, 0.9],
                          "energy_predicted": [1, 2, 3, 4, 5, 6], "accuracy_drop": [0.0, 0.2, 0.3, 0.5, 0.6, 0.8]})
    sym = rank_correlation(pairs, "misalignment", symmetric=True)
    assert sym["pairs"] == 3 and sym["rho"] == pytest.approx(1.0)
    assert rank_correlation(pairs, "energy_predicted")["pairs"] == 6


def test_degradation_warnings_name_the_failing_pairs():
    pairs = pd.DataFrame([
        {"designated": "a", "model": "b", "energy_agrees": False, "energy_predicted": 2.0, "energy_measured": 1.0,
         "energy_se": 0.01, "lower_bound_holds": True, "lower_bound": 0.1, "energy_circular": 2.0, "reason": None},
        {"designated": "a", "model": "c", "energy_agrees": True, "energy_predicted": 1.0, "energy_measured": 1.0,
         "energy_se": 0.01, "lower_bound_holds": True, "lower_bound": 0.1, "energy_circular": 1.0, "reason": None}])
    found = degradation_warnings(pairs)
    assert len(found) == 1 and "a -> b" in found[0]["message"] and found[0]["check"] == "degradation"
