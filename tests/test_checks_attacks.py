"""The sanity checks on attacks themselves. content: an attack that claims to remove the NTE noise (knowledge
'method' and above, projections aside) must keep clean content; one that lowers an unauthorized model's accuracy on
the attacked clean images by more than 5 points, where identity does not, is one warning per attack setting.
estimator: a blind attack whose subspace estimate is within 10 degrees of the truth must come within 5 points of
its oracle."""

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from nte_eval.attacks import ATTACKS, Attack
from nte_eval.attacks.subspace.blind import BlindFill
from nte_eval.evaluate.checks import attacks_keep_content, run_checks
from nte_eval.evaluate.store import COLUMNS
from nte_eval.evaluate.suite import parse_suite
from nte_eval.runner import run_suite


class Smear(Attack, register=False):
    """A 'denoiser' that smooths with a 15-pixel box: it removes the noise and the digits with it (test attack)."""

    name = "test_smear"
    knowledge = "method"

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 15, stride=1, padding=7, count_include_pad=False)


class SmearProcessing(Smear, register=False):
    """The same smoothing as plain processing, knowledge 'none' (test attack): not held to the content check."""

    name = "test_smear_processing"
    knowledge = "none"


class Keep(Attack, register=False):
    """A method-level attack that hands the images back unchanged (test attack): it keeps all content."""

    name = "test_keep"
    knowledge = "method"

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


@pytest.fixture(scope="module", autouse=True)
def registered_test_attacks():
    with ATTACKS.scope(Smear, SmearProcessing, Keep):
        yield


def _content(warnings: list[dict]) -> list[dict]:
    return [w for w in warnings if w["check"] == "content"]


def test_a_damaging_method_attack_is_one_warning_naming_it_and_the_model(tmp_path):
    suite = parse_suite({"name": "content", "data": {"source": "digits", "split": "test", "limit": 40},
                         "designated": "zoo:vit_null", "models": ["zoo:resnet_stem"],
                         "encoders": [{"type": "nte", "psnr": 30}],
                         "attacks": ["identity", "test_smear", "test_smear_processing", "test_keep"]})
    results = run_suite(suite, tmp_path, progress=False, log=lambda _: None)
    (warning,) = _content(json.loads((tmp_path / "warnings.json").read_text()))
    assert _content(run_checks(results, tmp_path)) == [warning]
    message = warning["message"]
    assert message.startswith("test_smear damages clean content") and "(identity: no drop)" in message
    assert "on 1 encoder setting(s): nte 30 dB (designated zoo:vit_null): zoo:resnet_stem " in message
    assert "zoo:vit_null " not in message.split("(designated zoo:vit_null)")[1]  # the designated model is not held
    acc = results[(results.attack == "test_smear") & (results.model == "zoo:resnet_stem")].set_index("metric").value
    assert acc["clean_accuracy"] - acc["attacked_clean_accuracy"] > 0.3  # the smear really destroys the digits
    assert f"{100 * acc['clean_accuracy']:.1f}% -> {100 * acc['attacked_clean_accuracy']:.1f}%" in message


def _rows(attack: str, drop: float) -> list[tuple]:
    setting = '{"designated":"d","psnr":30.0}'
    return [("nte", setting, attack, "{}", "m", "unauthorized", "clean_accuracy", 0.9, 40),
            ("nte", setting, attack, "{}", "m", "unauthorized", "attacked_clean_accuracy", 0.9 - drop, 40)]


def test_the_drop_is_measured_against_identity_or_else_clean_accuracy():
    """Exactly 5 points is not more than 5; without identity the drop is taken from clean accuracy (and the warning
    says so); where identity itself drops as much, the attack is not blamed."""
    assert attacks_keep_content(pd.DataFrame(_rows("test_smear", 0.05), columns=COLUMNS)) == []
    (alone,) = attacks_keep_content(pd.DataFrame(_rows("test_smear", 0.1), columns=COLUMNS))
    assert "no identity in this run: compared with clean accuracy" in alone["message"]
    assert "m 90.0% -> 80.0%" in alone["message"]
    both = _rows("identity", 0.1) + _rows("test_smear", 0.1)
    assert attacks_keep_content(pd.DataFrame(both, columns=COLUMNS)) == []
    assert attacks_keep_content(pd.DataFrame(_rows("test_smear_processing", 0.5), columns=COLUMNS)) == []


def test_projections_are_not_held_to_content():
    """blind_subspace, surrogate_projection and oracle_projection delete a subspace by design (on the quickstart they
    cost up to 71, 48 and 45 points on clean images); the estimator check compares them with their oracle."""
    assert all(ATTACKS.get(a).projection for a in ("blind_subspace", "surrogate_projection", "oracle_projection"))
    assert attacks_keep_content(pd.DataFrame(_rows("oracle_projection", 0.5), columns=COLUMNS)) == []


class WeakFill(BlindFill, register=False):
    """blind_fill that hands back only half its correction (test attack): its estimate is as good as blind_fill's,
    its result deliberately weaker."""

    name = "test_weak_fill"

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return (x + super().run(x)) / 2


def test_a_weak_blind_attack_is_one_estimator_warning(tmp_path):
    suite = {"name": "estimator", "data": {"source": "digits", "split": "test", "limit": 60},
             "designated": "zoo:vit_null", "models": ["zoo:resnet_stem"], "encoders": [{"type": "nte", "psnr": 0}],
             "attacks": ["identity", "blind_fill", "test_weak_fill", "oracle_fill"]}
    with ATTACKS.scope(WeakFill):
        suite = parse_suite(suite)
        results = run_suite(suite, tmp_path, progress=False, log=lambda _: None)
        (warning,) = [w for w in json.loads((tmp_path / "warnings.json").read_text()) if w["check"] == "estimator"]
    angles = results[results.metric == "estimate_angle_deg"].set_index("attack").value
    assert angles["test_weak_fill"] == angles["blind_fill"] <= 10  # one estimate: the angle is not what differs
    assert warning["message"].startswith("test_weak_fill on nte 0 dB (designated zoo:vit_null): its subspace "
                                         f"estimate is within {angles['blind_fill']:.1f} degrees")
    assert "zoo:resnet_stem" in warning["message"] and "blind_fill on" not in warning["message"]
