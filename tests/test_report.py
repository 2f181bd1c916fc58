"""The report of the quickstart suite: page 1 is the executive summary; every page renders (pdftoppm), is A4 and at
least half full; every table row of summary.md is on a page, every word inside its page and no two gallery labels
overlap (pdftotext); `nte-eval report` rebuilds the same tables from the files alone; levels are cumulative and the
verdicts, figures and gallery follow one best attack recomputed here from results.csv; summary.md/.tex hold the
headline tables. The verdict logic on small hand-made frames: test_verdict.py."""

import html
import json
import math
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from nte_eval.cli import main
from nte_eval.evaluate.checks import attacks_keep_content, blind_estimates_reach_their_oracles
from nte_eval.evaluate.labels import attack_name, compact, setting_name
from nte_eval.evaluate.run_folder import example_file
from nte_eval.evaluate.store import COLUMNS, read_rows
from nte_eval.evaluate.worst_case import LEVELS
from nte_eval.knowledge import KNOWLEDGE
from nte_eval.reports import write_report
from nte_eval.reports.accuracy_psnr import accuracy_psnr_pages
from nte_eval.reports.headline import headline
from nte_eval.reports.summary_files import markdown, tex_escape, text
from nte_eval.reports.tuning import label_free_choice

FIGURE_PAGES = {"accuracy_psnr": 1, "attack_heatmap": 3, "knowledge_bars": 1, "degradation": 1, "fidelity": 1,
                "spectra": 1, "gallery": 3}  # 2 designated models, 6 encoder settings: 3 rows of PSNR panels, 2
# heatmaps and 2 gallery settings per page, 6 bar panels
TEXT_PAGES = ("executive_summary", "tables", "adaptation")
A4 = (841.68, 595.44)  # points, landscape


@pytest.fixture
def quickstart(quickstart_run):
    return quickstart_run


@pytest.fixture(scope="module")
def report(quickstart_run, tmp_path_factory):
    """The report written again into a copy of the quickstart run (the session's run folder stays read-only)."""
    copy = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(quickstart_run, copy)
    return write_report(copy)


def words(pdf) -> list[list[tuple[float, float, float, float, str]]]:
    """Per page, every word pdftotext finds with its box (x0, y0, x1, y1 in points from the top left); pieces that
    touch on one line (a ligature such as "fi" is its own piece) are joined."""
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    out = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], check=True, capture_output=True, text=True).stdout
    word = re.compile(r'<word xMin="([-\d.]+)" yMin="([-\d.]+)" xMax="([-\d.]+)" yMax="([-\d.]+)">(.*?)</word>')
    pages = []
    for page in out.split("<page ")[1:]:
        joined = []
        for *box, piece in word.findall(page):
            x0, y0, x1, y1 = map(float, box)
            last = joined[-1] if joined else None
            if last and abs(x0 - last[2]) < 0.6 and abs(y1 - last[3]) < 0.6:
                joined[-1] = (last[0], min(y0, last[1]), x1, last[3], last[4] + html.unescape(piece))
            else:
                joined.append((x0, y0, x1, y1, html.unescape(piece)))
        pages.append(joined)
    return pages


def core(w: tuple[float, float, float, float, str]) -> tuple[float, float]:
    """The vertical middle half of a word's box, where its glyphs are (pdftotext's box spans the font's extent)."""
    middle, half = (w[1] + w[3]) / 2, (w[3] - w[1]) / 4
    return middle - half, middle + half


def flat(value: str) -> str:
    return " ".join(value.split())


def reading(page: list[tuple[float, float, float, float, str]]) -> str:
    """A page's words in reading order: lines top to bottom (by baseline), each left to right."""
    lines: list[list] = []
    for w in sorted(page, key=lambda w: w[3]):
        if lines and abs(w[3] - lines[-1][0][3]) < 1.0:
            lines[-1].append(w)
        else:
            lines.append([w])
    return " ".join(w[4] for line in lines for w in sorted(line))


def cumulative_best(results: pd.DataFrame, manifest: dict) -> pd.Series:
    """Independently of the package: per (setting, model, level), the best accuracy over every attack at or below
    the level, from results.csv and the manifest's knowledge levels."""
    level = {(a["type"], compact(a["params"])): KNOWLEDGE.index(a["knowledge"]) for a in manifest["attacks"]}
    acc = results[(results.metric == "accuracy") & (results.attack != "certify")]
    acc = acc.assign(level=[level[(a, p)] for a, p in zip(acc.attack, acc.attack_params, strict=True)])
    return pd.concat({k: acc[acc.level <= i].groupby(["encoder_params", "model"]).value.max()
                      for i, k in enumerate(KNOWLEDGE)}, names=["knowledge"])


def test_every_page_renders_is_a4_and_none_is_blank_or_half_empty(report, rendered_ink, tmp_path):
    kinds = pd.Series(report.pages).value_counts()
    for kind, count in FIGURE_PAGES.items():
        assert kinds.get(kind) == count, (kind, report.pages)
    assert set(kinds.index) == set(FIGURE_PAGES) | set(TEXT_PAGES)
    assert report.pages[0] == "executive_summary" and report.pages.count("executive_summary") == 1
    ink = rendered_ink(report.path)
    assert len(ink) == len(report.pages)
    for kind, share in zip(report.pages, ink, strict=True):
        assert share > 0.005, f"a {kind} page is blank: {share:.4f} of it has ink"
    info = subprocess.run(["pdfinfo", "-l", "999", str(report.path)], check=True, capture_output=True, text=True)
    sizes = re.findall(r"Page\s+\d+ size:\s+([\d.]+) x ([\d.]+)", info.stdout)
    assert len(sizes) == len(report.pages) and {(float(w), float(h)) for w, h in sizes} == {A4}
    for n, page in enumerate(words(report.path)):
        lowest = max(y1 for _, _, _, y1, _ in page)
        assert lowest > 0.6 * A4[1], f"page {n + 1} ({report.pages[n]}) ends at {lowest / A4[1]:.0%} of its height"


def test_every_summary_row_is_on_a_page_and_every_word_inside_it(report):
    pages = words(report.path)
    for n, page in enumerate(pages):
        outside = [w for w in page if w[0] < -0.5 or w[2] > A4[0] + 0.5 or w[3] > A4[1] + 0.5 or w[1] < -3]
        assert not outside, f"page {n + 1} ({report.pages[n]}) runs off at {outside[:5]}"
    shown = " ".join(reading(page) for page in pages)
    rows = [line for line in (report.path.parent / "summary.md").read_text().splitlines() if line.startswith("| zoo:")]
    assert len(rows) > 60
    for row in rows:
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        assert " ".join(cells) in shown, f"not on any page: {row}"


def test_gallery_and_heatmap_labels_are_whole_and_do_not_overlap(report):
    h = report.headline
    pages = words(report.path)
    for kind in ("gallery", "attack_heatmap"):
        shown = " ".join(reading(page) for n, page in enumerate(pages) if report.pages[n] == kind)
        for name in h.levels.attack.str.replace(r" \((none|method|surrogate|oracle)\)$", "", regex=True):
            for piece in name.split():
                assert piece in shown.split(), (kind, piece)
    for n, page in enumerate(pages):
        if report.pages[n] != "gallery":
            continue
        for i, a in enumerate(page):
            for b in page[i + 1:]:
                overlap = min(a[2], b[2]) - max(a[0], b[0]), min(core(a)[1], core(b)[1]) - max(core(a)[0], core(b)[0])
                assert min(overlap) < 0.5, f"gallery page {n + 1}: {a[4]!r} overlaps {b[4]!r}"


def test_executive_summary_is_page_one(report):
    h = report.headline
    first = reading(words(report.path)[0])
    assert first.startswith("nte-eval report: quickstart, executive summary")
    assert "n = 40 evaluated images" in first and f"95% interval under {h.threshold:.1f}%" in first
    for sentence in h.verdicts:
        assert flat(sentence) in first, sentence
    assert first.count("Robustness for the owner:") == len(h.settings) == 6


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


def test_levels_are_cumulative_and_follow_results_csv(quickstart):
    """worst_case.csv, the levels table and the verdicts hold the best over every attack at or below a level."""
    h = headline(quickstart)
    results = pd.read_csv(quickstart / "results.csv", keep_default_na=False)
    truth = cumulative_best(results, json.loads((quickstart / "manifest.json").read_text()))
    wc = pd.read_csv(quickstart / "worst_case.csv", keep_default_na=False)
    for r in wc[wc.summary.isin(LEVELS)].itertuples(index=False):
        assert r.value == truth[(r.summary.removeprefix("best_"), r.encoder_params, r.model)]
    for s in h.settings.itertuples(index=False):
        part = results[results.encoder_params == s.encoder_params]
        unauthorized = set(part[part.role == "unauthorized"].model)
        levels = h.levels[(h.levels.designated == s.designated) & (h.levels.setting == s.setting)]
        held = list(levels.held)
        assert "held" not in held[held.index("NOT held"):] if "NOT held" in held else True, held  # none above a break
        assert list(levels["max unauthorized %"]) == sorted(levels["max unauthorized %"])
        for r in levels.itertuples(index=False):
            best = max(truth[(r.knowledge, s.encoder_params, m)] for m in unauthorized)
            assert r[levels.columns.get_loc("max unauthorized %")] == round(100 * best, 1)


def test_verdicts_name_the_lowest_level_that_broke_the_ntes(quickstart):
    manifest = json.loads((quickstart / "manifest.json").read_text())
    chance = manifest["data"]["chance"]
    assert 0.05 < chance < 0.3  # majority-class rate of 40 digits
    h = headline(quickstart)
    threshold = 100 * chance + h.margin
    for (des, setting), levels in h.levels.groupby(["designated", "setting"], sort=False):
        sentence = next(v for v in h.verdicts if v.startswith(f"{des}, {setting}:"))
        broken = levels[levels["CI low %"] > threshold]  # a whole 95% interval above the threshold
        assert ("NOT held" in sentence) == (len(broken) > 0), sentence
        if len(broken):
            first = broken.iloc[0]
            level = "no" if first.knowledge == "none" else first.knowledge
            assert (f"{level} knowledge suffices, {first.attack} lifts {first.model} to "
                    f"{first['max unauthorized %']:.1f}% (95% CI {first['CI low %']:.1f}\u2013") in sentence
    # Oracle knowledge restores the unauthorized models on this zoo (the sanity check demands it): never held.
    assert (h.levels[h.levels.knowledge == "oracle"].held == "NOT held").all()
    everything_held = headline(quickstart, margin=100.0)
    assert all("NOT held" not in v for v in everything_held.verdicts)


def test_robustness_for_the_owner_follows_results_csv(quickstart):
    """The designated model's worst benign (knowledge none, identity aside) processing and how many keep it within
    the margin; the quickstart's 0 dB NTEs do not survive its own benign processing."""
    h = headline(quickstart)
    results = pd.read_csv(quickstart / "results.csv", keep_default_na=False)
    manifest = json.loads((quickstart / "manifest.json").read_text())
    benign = {(a["type"], compact(a["params"])) for a in manifest["attacks"] if a["knowledge"] == "none"} - {
        ("identity", "{}")}
    des = results[(results.role == "designated") & (results.metric == "accuracy")]
    des = des[[(a, p) in benign for a, p in zip(des.attack, des.attack_params, strict=True)]]
    for s, o in zip(h.settings.itertuples(index=False), h.owner.itertuples(index=False), strict=True):
        part = des[des.encoder_params == s.encoder_params]
        worst = part.loc[part.value.idxmin()]
        assert o[h.owner.columns.get_loc("worst benign %")] == round(100 * worst.value, 1)
        assert o[h.owner.columns.get_loc("worst benign processing")] == attack_name(worst.attack,
                                                                                    worst.attack_params)
        clean = o[h.owner.columns.get_loc("clean %")]
        assert o[h.owner.columns.get_loc("within margin")] == (100 * part.value >= clean - h.margin).sum()
        assert o[h.owner.columns.get_loc("benign processings")] == len(benign)
    assert h.owner[h.owner.setting == "nte 0 dB"]["worst benign %"].max() < 50


class Recorder:
    """Stands in for the PDF: keeps each page's lines (label and points) per panel."""

    def __init__(self):
        self.pages = []

    def savefig(self, fig) -> None:  # noqa: ANN001
        self.pages.append([[(line.get_label(), line.get_xydata()) for line in ax.lines] for ax in fig.axes])


def test_accuracy_against_psnr_shows_each_level_at_measured_points_only(quickstart):
    h = headline(quickstart)
    results = pd.read_csv(quickstart / "results.csv", keep_default_na=False, dtype={"encoder_params": str})
    worst = pd.read_csv(quickstart / "worst_case.csv", keep_default_na=False, dtype={"encoder_params": str})
    pdf = Recorder()
    accuracy_psnr_pages(pdf, results, worst, h, "top-1 accuracy")
    assert len(pdf.pages) == 1
    panels = pdf.pages[0]
    assert len(panels) == 3 * 6  # vit_null unboxed and storable, resnet_nullstem unboxed; 5 panels + legend
    truth = cumulative_best(results, json.loads((quickstart / "manifest.json").read_text()))
    ident = results[(results.attack == "identity") & (results.metric == "psnr") & (results.role == "designated")]
    psnr = ident.groupby("encoder_params").value.first()
    for row in range(3):
        for col, summary in enumerate(["no_attack", *LEVELS]):
            lines = [(label, xy) for label, xy in panels[6 * row + col] if not label.startswith("held threshold")]
            assert lines, (row, summary)
            for _, xy in lines:
                for x, y in xy:  # a marker only where a setting was measured, at its measured accuracy
                    params = psnr.index[np.isclose(psnr.values, x)]
                    assert len(params), x
                    if summary != "no_attack":
                        assert any(np.isclose(100 * truth[(summary.removeprefix("best_"), p, m)], y)
                                   for p in params for m in set(results.model)), (summary, x, y)


def test_summary_files_hold_the_headline_tables(quickstart):
    h = headline(quickstart)
    md = (quickstart / "summary.md").read_text()
    assert md == markdown(h, "nte-eval: quickstart")
    table_rows = [line for line in md.splitlines() if line.startswith("| zoo:")]
    assert len(table_rows) == (len(h.designated) + len(h.owner) + len(h.unauthorized) + len(h.levels)
                               + len(h.tuning) + len(h.certification))
    tex = (quickstart / "summary.tex").read_text()
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 6
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == 6
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


def test_the_report_sets_the_label_free_choice_beside_the_hindsight_one(quickstart_run):
    results = read_rows(quickstart_run / "results.csv", COLUMNS)
    table = label_free_choice(results)
    swept = {"jpeg", "gaussian_blur", "tv_chambolle"}  # the quickstart's strength sweeps
    settings = results[results.attack == "identity"].encoder_params.nunique()
    assert set(table.attack) == swept and len(table) == len(swept) * settings
    scores = results[results.metric == "probe_psnr"]
    acc = results[(results.metric == "accuracy") & (results.role == "unauthorized")]
    # the label-free choice is the best probe PSNR, the hindsight one the best mean accuracy: never above it
    assert (table["hindsight %"] >= table["label-free %"]).all()
    assert (table["gap (points)"] == (table["hindsight %"] - table["label-free %"]).round(1)).all()
    for row in table.itertuples(index=False):
        params = next(p for e, p in zip(scores.encoder, scores.encoder_params, strict=True)
                      if setting_name(e, p) == row.setting and json.loads(p)["designated"] == row.designated)
        mine = scores[(scores.encoder_params == params) & (scores.attack == row.attack)]
        chosen = mine.attack_params[mine.value.idxmax()]
        mean = acc[(acc.encoder_params == params) & (acc.attack == row.attack)].groupby("attack_params").value.mean()
        assert row[3] == attack_name(row.attack, chosen)
        assert row[4] == pytest.approx(100 * mean[chosen], abs=0.051)  # shown to 0.1 points
        assert row[7] == pytest.approx(100 * mean.max(), abs=0.051)
    first = table.iloc[0]
    summary = (quickstart_run / "summary.md").read_text()
    assert "Choosing an attack's strength without labels" in summary
    assert f"| {first['label-free choice']} |" in summary


def test_the_plumbing_quickstart_names_only_its_undertrained_denoiser(quickstart_run):
    """On the 40-image plumbing quickstart only learned_denoiser (40 training steps there) damages clean content;
    no processing and no projection is named, and the run's warnings.json holds what the check finds."""
    results = read_rows(quickstart_run / "results.csv", COLUMNS)
    found = attacks_keep_content(results)
    assert [w for w in json.loads((quickstart_run / "warnings.json").read_text()) if w["check"] == "content"] == found
    assert {w["message"].split(" ", 1)[0] for w in found} <= {"learned_denoiser"}
    assert [w for w in json.loads((quickstart_run / "warnings.json").read_text()) if w["check"] == "estimator"] == []
    assert blind_estimates_reach_their_oracles(results) == []
    angles = results[results.metric == "estimate_angle_deg"]
    assert set(angles.attack) == {"blind_fill", "blind_subspace"} and (angles.value <= 10).any()
