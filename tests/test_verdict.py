"""The verdict logic on small hand-made worst_case and results frames (two unauthorized models a and b, one encoder
setting, n = 100, a threshold of 25%): levels are cumulative, each is judged by its 95% intervals (held, NOT held or
inconclusive with the n that would decide), a designated model that loses its utility or a degenerate evaluation is
never "held", models at chance are named, and the robustness for the owner counts benign processings only. The same
on a real run: test_report.py."""

import pandas as pd
import pytest

from nte_eval.evaluate.worst_case import cumulative
from nte_eval.metrics import deciding_n, proportion_interval
from nte_eval.reports.verdict import levels_table, owner_line, owner_table, standing, verdict, weak_models

PARAMS = '{"designated":"d","psnr":0}'
ATTACKS = {"none": ("jpeg", '{"quality":90}'), "method": ("blind_fill", "{}"),
           "surrogate": ("surrogate_projection", "{}"), "oracle": ("oracle_fill", "{}")}  # each level's own attack


def worst_frame(best: dict[str, dict[str, float]], clean: float = 0.95) -> pd.DataFrame:
    """worst_case rows for models a and b: clean, and per level (best[level][model]) that level's own best attack."""
    head = {"designated": "d", "encoder": "nte", "encoder_params": PARAMS, "role": "unauthorized", "n": 100}
    rows = [{**head, "model": m, "summary": "clean", "attack": "", "attack_params": "", "knowledge": "", "value": clean}
            for m in "ab"]
    rows += [{**head, "model": m, "summary": f"best_{level}", "attack": ATTACKS[level][0],
              "attack_params": ATTACKS[level][1], "knowledge": level, "value": v}
             for level, values in best.items() for m, v in values.items()]
    rows += [{**head, "model": m, "summary": "best_single", "attack": "", "attack_params": "", "knowledge": "",
              "value": max(values[m] for values in best.values())} for m in "ab"]
    return cumulative(pd.DataFrame(rows))


def judge(best: dict[str, dict[str, float]], nte: float = 96.0, n: int = 100, chance: float = 0.15,
          clean: float = 0.95) -> tuple[str, pd.DataFrame]:
    """The verdict and levels table of one hand-made setting (designated clean 96%)."""
    worst = worst_frame(best, clean)
    des = pd.Series({"designated": "d", "setting": "nte 0 dB", "NTE %": nte, "clean %": 96.0})
    weak = weak_models(worst[worst.summary == "clean"], 25.0)
    status = standing(des, n, chance, weak, ["a", "b"], 10.0)
    settings = pd.DataFrame([{"encoder": "nte", "encoder_params": PARAMS, "designated": "d", "setting": "nte 0 dB",
                              "standing": status[0]}])
    levels = levels_table(worst, settings, 25.0)
    return verdict(des, levels, status, 25.0, 10.0, weak), levels


def test_levels_are_cumulative_a_break_below_is_a_break_above():
    """Today's bug: 'Held against method, oracle' next to 'NOT held against none'."""
    text, levels = judge({"none": {"a": 0.9, "b": 0.1}, "method": {"a": 0.1, "b": 0.1}, "oracle": {"a": 0.2,
                                                                                                     "b": 0.1}})
    assert list(levels.held) == ["NOT held"] * 4 and "Held" not in text and "held against" not in text
    assert list(levels["max unauthorized %"]) == [90.0] * 4 and set(levels.attack) == {"jpeg quality=90 (none)"}
    low, high = (round(100 * v, 1) for v in proportion_interval(90, 100))
    assert (f"NOT held: no knowledge suffices, jpeg quality=90 (none) lifts a to 90.0% (95% CI {low}\u2013{high}%), "
            "above 25.0% (clean 95.0%).") in text
    worst = worst_frame({"none": {"a": 0.9, "b": 0.1}, "method": {"a": 0.1, "b": 0.3}})
    rows = worst.set_index(["model", "summary"])
    assert rows.loc[("a", "best_method"), "attack"] == "jpeg" and rows.loc[("a", "best_method"), "value"] == 0.9
    assert rows.loc[("b", "best_method"), "attack"] == "blind_fill" and rows.loc[("a", "best_single"), "value"] == 0.9
    assert "best_surrogate" not in rows.loc["a"].index  # no attack of its own: no row
    assert cumulative(worst).equals(worst)  # idempotent: files written before levels were cumulative read the same


def test_held_levels_below_the_break_and_untested_levels_are_named():
    text, levels = judge({"none": {"a": 0.1, "b": 0.05}, "method": {"a": 0.05, "b": 0.1}, "oracle": {"a": 0.9,
                                                                                                      "b": 0.3}})
    assert list(levels.held) == ["held", "held", "not tested", "NOT held"]
    assert list(levels["max unauthorized %"]) == [10.0, 10.0, 10.0, 90.0]
    assert "NOT held: oracle knowledge suffices" in text
    assert "it held against no knowledge and method knowledge." in text and "Not tested: surrogate knowledge." in text
    text, levels = judge({"none": {"a": 0.1, "b": 0.05}, "oracle": {"a": 0.1, "b": 0.1}})
    assert list(levels.held) == ["held", "not tested", "not tested", "held"] and "NOT held" not in text
    assert ("Held against no knowledge and oracle knowledge: every unauthorized model's 95% interval lies under "
            "25.0%") in text


@pytest.mark.parametrize("value", [0.2, 0.3])
def test_an_interval_across_the_threshold_is_inconclusive_with_the_n_that_decides(value):
    """20% (or 30%) of 100 against a 25% threshold: the 95% interval contains 25%, so neither held nor NOT held,
    whatever the point estimate says; the n named is where the same rate's interval first leaves 25%."""
    text, levels = judge({"none": {"a": 0.1, "b": 0.05}, "method": {"a": value, "b": 0.1}})
    assert list(levels.held) == ["held", "inconclusive", "not tested", "not tested"]
    needed = int(levels["decides at n"].iloc[1])
    side = (lambda m: proportion_interval(round(value * m), m)[1] < 0.25) if value < 0.25 else (
        lambda m: proportion_interval(round(value * m), m)[0] > 0.25)
    assert side(needed) and not side(int(0.97 * needed)) and not side(100)
    assert f"INCONCLUSIVE at n = 100 against method knowledge: blind_fill (method) gives a {100 * value:.1f}%" in text
    assert f"about n = {needed:,} would decide it. It held against no knowledge." in text
    assert "Held against" not in text and "NOT held" not in text


def test_a_designated_model_that_loses_its_utility_is_not_held():
    text, levels = judge({"none": {"a": 0.1, "b": 0.1}, "oracle": {"a": 0.2, "b": 0.1}}, nte=14.0)
    assert text.startswith("d, nte 0 dB: NOT useful to the designated model (14.0% on the NTEs, clean 96.0%")
    assert "Held" not in text and "held" not in set(levels.held) and set(levels.held) >= {"not useful"}
    text, _ = judge({"none": {"a": 0.9, "b": 0.1}}, nte=14.0)
    assert "NOT useful" in text and "NOT held: no knowledge suffices" in text  # both failures are said
    assert "Useful to the designated model (90.0%" in judge({"none": {"a": 0.1, "b": 0.1}}, nte=90.0)[0]


@pytest.mark.parametrize(("kwargs", "why"), [({"n": 12}, "n = 12 < 30"), ({"chance": 0.92}, "chance 92.0% >= 90%"),
                                             ({"chance": 1.0}, "one class only"),
                                             ({"clean": 0.2}, "no unauthorized model is above the threshold")])
def test_degenerate_evaluations_are_uninformative_never_held(kwargs, why):
    text, levels = judge({"none": {"a": 0.1, "b": 0.1}, "oracle": {"a": 0.2, "b": 0.1}}, **kwargs)
    assert text.startswith(f"d, nte 0 dB: UNINFORMATIVE ({why}") and "Held" not in text
    assert "held" not in set(levels.held) and "uninformative" in set(levels.held)


def test_verdict_names_models_already_at_chance():
    """A model at chance on clean inputs cannot show protection: the verdict names it."""
    worst = worst_frame({"none": {"a": 0.1, "b": 0.1}})
    worst.loc[(worst.model == "b") & (worst.summary == "clean"), "value"] = 0.2
    weak = weak_models(worst[worst.summary == "clean"], 25.0)
    assert list(weak) == ["b"] and weak["b"] == pytest.approx(20.0)
    des = pd.Series({"designated": "d", "setting": "nte 0 dB", "NTE %": 96.0, "clean %": 96.0})
    status = standing(des, 100, 0.15, weak, ["a", "b"], 10.0)
    settings = pd.DataFrame([{"encoder": "nte", "encoder_params": PARAMS, "designated": "d", "setting": "nte 0 dB",
                              "standing": status[0]}])
    text = verdict(des, levels_table(worst, settings, 25.0), status, 25.0, 10.0, weak)
    assert "Held against no knowledge" in text and "Uninformative for b (20.0%)" in text and "a (" not in text


def test_robustness_for_the_owner_counts_benign_processings_only():
    head = {"encoder": "nte", "encoder_params": PARAMS, "model": "d", "role": "designated", "n": 100}
    rows = [("identity", "{}", "accuracy", 0.96), ("identity", "{}", "clean_accuracy", 0.97),
            ("jpeg", '{"quality":90}', "accuracy", 0.10), ("jpeg", '{"quality":50}', "accuracy", 0.90),
            ("blind_fill", "{}", "accuracy", 0.01)]
    results = pd.DataFrame([{**head, "attack": a, "attack_params": p, "metric": m, "value": v} for a, p, m, v in rows])
    knowledge = {("identity", "{}"): "none", ("jpeg", '{"quality":90}'): "none", ("jpeg", '{"quality":50}'): "none",
                 ("blind_fill", "{}"): "method"}
    settings = pd.DataFrame([{"encoder_params": PARAMS, "designated": "d", "setting": "nte 0 dB"}])
    owner = owner_table(results, settings, knowledge, 10.0).iloc[0]
    assert owner["benign processings"] == 2 and owner["within margin"] == 1
    assert owner["worst benign %"] == 10.0 and owner["worst benign processing"] == "jpeg quality=90"
    assert "2 benign (no-knowledge) processings" in owner_line(owner, 10.0) and "jpeg quality=90, leaves 10.0%" in (
        owner_line(owner, 10.0))
    unmeasured = owner_table(results[results.attack == "identity"], settings, knowledge, 10.0).iloc[0]
    assert unmeasured["benign processings"] == 0 and "not measured" in owner_line(unmeasured, 10.0)


def test_one_model_above_the_threshold_names_the_n_that_would_break_the_ntes():
    """a at 33% (above 25%, interval across it) and b at 25% (at it): the n that decides is a's, which once decided
    breaks the NTEs whatever b does."""
    _, levels = judge({"none": {"a": 0.33, "b": 0.25}})
    assert levels.held.iloc[0] == "inconclusive"
    assert levels["decides at n"].iloc[0] == deciding_n(0.33, 0.25, 100)
    assert proportion_interval(round(0.33 * 150), 150)[0] > 0.25 or deciding_n(0.33, 0.25, 100) > 150


def test_label_free_models_are_judged_by_their_own_chance_and_a_one_class_model_is_left_out():
    """Label-free: a always gives the same clean prediction (chance 95%: threshold 105%), b's chance is 15%. a
    agrees with itself on the NTEs at 90%, which shows nothing; b at 10% is under its 25%: held."""
    worst = worst_frame({"none": {"a": 0.9, "b": 0.1}}, clean=1.0)
    limits = {"a": 105.0, "b": 25.0}
    weak = weak_models(worst[worst.summary == "clean"], limits)
    assert list(weak) == ["a"]
    des = pd.Series({"designated": "d", "setting": "nte 0 dB", "NTE %": 96.0, "clean %": 100.0})
    status = standing(des, 100, 0.2, weak, ["a", "b"], 10.0)
    settings = pd.DataFrame([{"encoder": "nte", "encoder_params": PARAMS, "designated": "d", "setting": "nte 0 dB",
                              "standing": status[0], "weak": tuple(weak)}])
    levels = levels_table(worst, settings, limits)
    assert levels.held.iloc[0] == "held" and levels.model.iloc[0] == "b" and levels["threshold %"].iloc[0] == 25.0
    text = verdict(des, levels, status, limits, 10.0, weak)
    assert "Held against no knowledge: every unauthorized model's 95% interval lies under each model's own" in text
    assert "Uninformative for a (100.0%): their clean predictions are nearly all one class (label-free)" in text
