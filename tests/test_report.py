"""The report of the quickstart suite: every page renders (pdftoppm) and none is blank; `nte-eval report` rebuilds the
same tables from the files alone; verdicts follow the measurements; summary.md/.tex hold the headline tables."""

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from nte_eval.cli import main
from nte_eval.evaluate.run_folder import example_file
from nte_eval.reports import write_report
from nte_eval.reports.headline import headline
from nte_eval.reports.summary_files import markdown, tex_escape, text

FIGURE_PAGES = {"accuracy_psnr": 2, "attack_heatmap": 3, "knowledge_bars": 2, "degradation": 1, "fidelity": 1,
                "spectra": 1, "gallery": 3}  # 2 designated models, 6 encoder settings: 2 heatmaps, 4 bar panels,
# 2 gallery settings per page
TEXT_PAGES = ("summary", "attackers", "certification", "appendix")


@pytest.fixture
def quickstart(quickstart_run):
    return quickstart_run


def test_every_page_renders_and_none_is_blank(quickstart, rendered_ink):
    report = write_report(quickstart)
    kinds = pd.Series(report.pages).value_counts()
    for kind, count in FIGURE_PAGES.items():
        assert kinds.get(kind) == count, (kind, report.pages)
    assert all(kinds.get(kind, 0) >= 1 for kind in TEXT_PAGES), report.pages
    assert set(kinds.index) == set(FIGURE_PAGES) | set(TEXT_PAGES)
    assert report.pages[0] == "summary" and report.pages[-1] == "appendix"
    ink = rendered_ink(report.path)
    assert len(ink) == len(report.pages)
    for kind, share in zip(report.pages, ink, strict=True):
        assert share > 0.005, f"a {kind} page is blank: {share:.4f} of it has ink"


def test_report_rebuilds_the_same_tables_from_the_files(quickstart, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(quickstart, copy)
    for name in ("report.pdf", "summary.md", "summary.tex"):
        (copy / name).unlink(missing_ok=True)
    assert main(["report", str(copy)]) == 0
    printed = capsys.readouterr().out
    assert (copy / "summary.md").read_text() == (quickstart / "summary.md").read_text()
    assert (copy / "summary.tex").read_text() == (quickstart / "summary.tex").read_text()
    assert text(headline(quickstart)) in printed
    assert "report.pdf" in printed and (copy / "report.pdf").stat().st_size > 10_000


def test_headline_tables_follow_the_results(quickstart):
    h = headline(quickstart)
    results = pd.read_csv(quickstart / "results.csv", keep_default_na=False)
    wc = pd.read_csv(quickstart / "worst_case.csv", keep_default_na=False)
    settings = results[results.attack == "identity"].encoder_params.unique()
    unauthorized = results[results.role == "unauthorized"].groupby("encoder_params").model.nunique()
    assert len(h.designated) == len(settings) == 6
    assert len(h.unauthorized) == unauthorized.sum() == 6 * 6
    for row, params in zip(h.designated.itertuples(index=False), settings, strict=True):
        ident = results[(results.encoder_params == params) & (results.attack == "identity")
                        & (results.role == "designated")].set_index("metric").value
        assert row[h.designated.columns.get_loc("NTE %")] == round(100 * ident["accuracy"], 1)
    best = wc[(wc.summary == "best_single") & (wc.role == "unauthorized")].value
    assert sorted(h.unauthorized["best attack %"]) == sorted(round(100 * v, 1) for v in best)
    # The unions are never below the best single attack (a union over attacks includes it).
    assert (h.unauthorized["union %"] >= h.unauthorized["best attack %"]).all()


def test_verdicts_say_not_held_exactly_when_an_attack_beats_the_threshold(quickstart):
    manifest = json.loads((quickstart / "manifest.json").read_text())
    chance = manifest["data"]["chance"]
    assert 0.05 < chance < 0.3  # majority-class rate of 40 digits
    h = headline(quickstart)
    threshold = 100 * chance + h.margin
    for (des, setting), levels in h.levels.groupby(["designated", "setting"], sort=False):
        sentence = next(v for v in h.verdicts if v.startswith(f"{des}, {setting}:"))
        broken = levels[levels["max unauthorized %"] > threshold]
        assert ("NOT held" in sentence) == (len(broken) > 0), sentence
        for r in broken.itertuples(index=False):
            assert f"{r.model} at {r[levels.columns.get_loc('max unauthorized %')]:.1f}%" in sentence
    # Oracle knowledge restores the unauthorized models on this zoo (the sanity check demands it): never held.
    assert (h.levels[h.levels.knowledge == "oracle"].held == "no").all()
    everything_held = headline(quickstart, margin=100.0)
    assert all("NOT held" not in v for v in everything_held.verdicts)


def test_summary_files_hold_the_headline_tables(quickstart):
    h = headline(quickstart)
    md = (quickstart / "summary.md").read_text()
    assert md == markdown(h, "nte-eval: quickstart")
    table_rows = [line for line in md.splitlines() if line.startswith("| zoo:")]
    assert len(table_rows) == len(h.designated) + len(h.unauthorized) + len(h.levels) + len(h.certification)
    tex = (quickstart / "summary.tex").read_text()
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 4
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == 4
    assert "zoo:vit\\_null" in tex and "zoo:vit_null" not in tex  # underscores escaped everywhere
    assert tex_escape("50% of a_b & {c}") == r"50\% of a\_b \& \{c\}"


def test_gallery_and_spectra_come_from_the_run(quickstart):
    results = pd.read_csv(quickstart / "results.csv", keep_default_na=False)
    cells = results[results.attack != "certify"][["encoder", "encoder_params", "attack", "attack_params"]]
    for cell in cells.drop_duplicates().itertuples(index=False):
        images = np.load(example_file(quickstart, *cell))
        assert images.shape == (3, 3, 32, 32) and np.isfinite(images).all()
    assert len(list((quickstart / "examples").glob("gallery-*.png"))) == 3
    spectra = pd.read_csv(quickstart / "spectra.csv")
    assert set(spectra.model) == {"zoo:vit_null", "zoo:resnet_nullstem", "zoo:vit_null_s1", "zoo:vit_wide",
                                  "zoo:resnet_stem", "zoo:convnext_patchify", "zoo:mlp_linear"}
    per_model = spectra.groupby("model")["count"].sum()
    assert per_model["zoo:vit_null"] == 48 and per_model["zoo:resnet_stem"] == 3 * 32 * 32  # per patch / per image
    assert per_model["zoo:mlp_linear"] == 3 * 32 * 32  # a Linear on the flattened image: one patch
    # vit_null's patch embedding (48 inputs, 32 outputs) has a 16-dimensional exact null space.
    assert spectra[(spectra.model == "zoo:vit_null")].exact_null.sum() == 16
    assert not math.isnan(spectra.sigma.max())
