"""``report.pdf`` from a run's files alone (no model is loaded): the executive summary, the tables, accuracy against
PSNR, the attack x model heatmaps, the best attack at or below each knowledge level, the adapted unauthorized
models (when the run has model attacks), the certification pages,
first-layer spectra, the image gallery (for text: decoded samples, with the designated model's tokenizer where its
folder is still there) and an appendix with every parameter and the environment. Also writes
``summary.md``/``summary.tex``.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.ft2font import FT2Font  # noqa: E402

from nte_eval.evaluate.labels import setting_name  # noqa: E402
from nte_eval.evaluate.run_folder import (
    ANGLES,
    CERTIFICATES,
    CERTIFY,
    COLLAPSE_PSNR,
    LIPSCHITZ,
    MANIFEST,
    REPORT,
    RESULTS,
    SPECTRA,
    TRANSFER_MATRIX,
    WORST_CASE,
    atomic_write,
    key_fingerprint,
)
from nte_eval.evaluate.store import COLUMNS, read_rows  # noqa: E402
from nte_eval.evaluate.worst_case import read_worst_case  # noqa: E402
from nte_eval.metrics import widest_half_width  # noqa: E402
from nte_eval.reports.accuracy_psnr import accuracy_psnr_pages  # noqa: E402
from nte_eval.reports.adaptation import adaptation_lines
from nte_eval.reports.certification import degradation_line
from nte_eval.reports.certify_pages import degradation_page, fidelity_page
from nte_eval.reports.decoded import decoded_lines  # noqa: E402
from nte_eval.reports.executive import executive_pages  # noqa: E402
from nte_eval.reports.figures import A4, heatmap_pages, knowledge_bars_pages  # noqa: E402
from nte_eval.reports.gallery import gallery_pages  # noqa: E402
from nte_eval.reports.headline import MARGIN, Headline, accuracy_name, attack_knowledge, headline, psnr_name  # noqa: E402
from nte_eval.reports.spectra import spectra_page
from nte_eval.reports.summary_files import matrix_lines, sections, table_lines, units, write_summaries  # noqa: E402
from nte_eval.reports.tables import collapse_psnr, transfer_matrix

FONTS = (6.5, 6.0, 5.5)  # monospace text pages: the largest size that needs the fewest pages
PITCH = 1.33  # matplotlib's line pitch of monospace text, per point of font size (measured)
KEEP = 12  # lines a page may end early to break at a blank line rather than inside a table
HEADER_WIDTH = int(11.0 * 72 / (8 * 0.6))  # the first page's header lines (8 pt)
GLYPHS = set(FT2Font(font_manager.findfont(font_manager.FontProperties(family="monospace"))).get_charmap())


def drawable(text: str) -> str:
    """``text`` with every character the monospace font cannot draw (e.g. CJK tokens) shown as a box."""
    return "".join(c if c == "\n" or ord(c) in GLYPHS else "\u25a1" for c in text)


def _pages(lines: list[str], header_lines: int, font: float) -> list[list[str]]:
    """``lines`` wrapped to the page width at ``font`` points and cut into pages as evenly as the fewest pages allow
    (so that no page of several is left nearly empty), each cut moved up to a blank line (the end of a table) within
    ``KEEP`` lines where the rest still fits; the first page ``header_lines`` header lines shorter."""
    per, width = int(7.3 * 72 / (font * PITCH)), int(11.0 * 72 / (font * 0.6))
    wrapped = [w for line in lines for w in (textwrap.wrap(line, width, subsequent_indent="    ",
                                                           replace_whitespace=False, break_on_hyphens=False) or [""])]
    first = per - 3 * header_lines
    pages = 1 + max(0, math.ceil((len(wrapped) - first) / per))
    chunks, start = [], 0
    for left in range(pages - 1, 0, -1):
        end = start + math.ceil((len(wrapped) - start) / (left + 1))
        end = min(end, start + (first if not chunks else per))
        blank = next((i for i in range(end, max(start, end - KEEP), -1) if not wrapped[i - 1].strip()), end)
        end = blank if len(wrapped) - blank <= left * per else end
        chunks.append(wrapped[start:end])
        start = end
    return [*chunks, wrapped[start:]]


def text_pages(pdf: PdfPages, kind: str, title: str, lines: list[str], header: list[str] | None = None) -> None:
    """Monospace text over as few pages as it needs (long lines wrapped, the font a little smaller where that saves a
    page); the first page may carry a header."""
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    if header:
        header = [header[0], *(w for line in header[1:] for w in textwrap.wrap(line, HEADER_WIDTH))]
    layouts = {font: _pages(lines, len(header or []), font) for font in FONTS}
    font = min(FONTS, key=lambda f: (len(layouts[f]), -f))
    chunks = layouts[font]
    for n, chunk in enumerate(chunks):
        fig = plt.figure(figsize=A4)
        fig.set_label(kind)
        top = 0.96
        if header and n == 0:
            fig.text(0.03, top, header[0], fontsize=16, weight="bold", va="top")
            fig.text(0.03, top - 0.05, "\n".join(header[1:]), fontsize=8, va="top", family="monospace")
            top -= 0.05 + 0.021 * len(header)
        else:
            fig.text(0.03, top, title + (f" (continued, {n + 1}/{len(chunks)})" if n else ""), fontsize=11,
                     weight="bold", va="top")
            top -= 0.045
        fig.text(0.03, top, drawable("\n".join(chunk)), fontsize=font, va="top", family="monospace")
        pdf.savefig(fig)
        plt.close(fig)


class ReportPages(PdfPages):
    """The report's multi-page PDF; remembers each page's kind (its figure's label) for the CLI and the tests."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.kinds: list[str] = []

    def savefig(self, figure=None, **kwargs) -> None:  # noqa: ANN001
        self.kinds.append(figure.get_label() or "untitled")
        super().savefig(figure, **kwargs)


def _models(manifest: dict, results: pd.DataFrame) -> pd.DataFrame:
    """Every model of the run with its first-layer geometry (text: type, vocabulary and embedding size) and clean
    accuracy."""
    config = manifest.get("config", {})
    roles = {}
    for spec in [*(config.get("surrogates") or [])]:
        roles[spec if isinstance(spec, str) else spec.get("name", str(spec))] = "surrogate"
    clean = results[results.metric == "clean_accuracy"].groupby("model").value.first()
    designated = set(results[results.role == "designated"].model)
    rows = []
    for name, m in manifest.get("models", {}).items():
        role = "designated" if name in designated else ("unauthorized" if name in clean.index else roles.get(
            name, "surrogate"))
        row = {"model": name, "role": role, "first layer": f"{m['layer']} ({m['kind']})"}
        if m.get("modality") == "text":
            row |= {"type": m["model_type"], "vocabulary": f"{m['vocab_size']} ({m['vocabulary']})",
                    "embedding dim": m["embedding_dim"], "max length": m["max_length"]}
        else:
            row |= {"kernel": "x".join(map(str, m["kernel"])), "stride": "x".join(map(str, m["stride"])),
                    "padding": "x".join(map(str, m["padding"])),
                    "channels": f"{m['in_channels']}->{m['out_channels']}",
                    "input": "x".join(map(str, m["input_size"]))}
        rows.append(row | {"clean %": round(100 * clean[name], 1) if name in clean.index else float("nan")})
    return pd.DataFrame(rows)


def _tables_pages(pdf: PdfPages, run_dir: Path, manifest: dict, results: pd.DataFrame, h: Headline,
                  appendix: list[str]) -> None:
    """The run's facts and every headline table as one flow of text pages: models, designated models, robustness for
    the owner, the unauthorized matrices, warnings, unauthorized models and attackers, certification, then
    ``appendix``."""
    env = manifest.get("environment", {})
    data = manifest.get("data", {})
    public = manifest.get("public") or {}
    if h.modality == "text":
        task = manifest.get("config", {}).get("data", {})
        public_text = (f"public (attackers'): {public.get('source')} {public.get('task') or task.get('task')} "
                       f"({public.get('path')}), n = {public.get('n')}" if public else "no public texts")
        source = (f"data: {data.get('source')} {task.get('task')} ({task.get('path')}), n = {data.get('n')} texts of "
                  f"at most {data.get('shape', ['?'])[0]} tokens; {public_text}")
        models = "Models and their first linear operator (the token embedding matrix E; a soft token r is read as rE):"
    else:
        source = (f"data: {data.get('source')} / {data.get('split')}, n = {data.get('n')}, images "
                  f"{data.get('shape')}; public (attackers'): {public.get('source', 'none')} / "
                  f"{public.get('split', '-')}, n = {public.get('n', 0)}")
        models = "Models and their first linear layer (pixel space):"
    header = [f"Details: {manifest.get('suite')}",
              f"finished {manifest.get('finished', 'unknown')}; nte-eval {env.get('nte_eval')}, "
              f"torch {env.get('torch')}, timm {env.get('timm')}, python {env.get('python')}; "
              f"device {manifest.get('device')}",
              f"{source}; key fingerprint {manifest.get('key_fingerprint') or key_fingerprint(manifest.get('seed'))}; "
              f"config {manifest.get('config_hash')}", units(h)]
    tables = [(caption, table) for caption, table in sections(h) if len(table)]
    lines = [models, *_models(manifest, results).to_string(index=False).splitlines(), ""]
    for caption, table in tables[:2]:
        lines += [caption, *table_lines(table), ""]
    lines += [*matrix_lines(h), "", f"Sanity-check warnings ({len(h.warnings)}):"]
    lines += [f"- [{w['check']}] {w['message']}" for w in h.warnings] or ["- none"]
    for caption, table in tables[2:]:
        lines += ["", caption, *table_lines(table)]
    if (run_dir / CERTIFY).exists():
        lines += ["", degradation_line(run_dir)]
    if (run_dir / LIPSCHITZ).exists():
        lines += ["", "Lipschitz bounds of the network after the first layer:",
                  *pd.read_csv(run_dir / LIPSCHITZ).to_string(index=False, max_colwidth=110).splitlines()]
    text_pages(pdf, "tables", "Details (accuracy %)", [*lines, "", *appendix], header=header)


def _certify_pages(pdf: PdfPages, run_dir: Path) -> None:
    """The degradation page and the fidelity scatter."""
    degradation = json.loads((run_dir / CERTIFY).read_text()).get("degradation")
    if degradation and (run_dir / ANGLES).exists():
        degradation_page(pdf, pd.read_csv(run_dir / ANGLES), degradation["spearman_misalignment"],
                         degradation["psnr"])
    if (run_dir / CERTIFICATES).exists():
        fidelity_page(pdf, pd.read_csv(run_dir / CERTIFICATES))


def _appendix(manifest: dict, results: pd.DataFrame, matrix: pd.DataFrame, notes: list[str]) -> list[str]:
    """The appendix as text lines: the transfer matrix, every encoder and attack setting with all its parameters, the
    environment, and ``notes`` (e.g. why a page is left out)."""
    modality = manifest.get("data", {}).get("modality", "image")
    name, unit = psnr_name(modality)
    acc = results[results.metric == "accuracy"]
    n = int(acc.n.min()) if len(acc) else 0
    lines = ["APPENDIX: PARAMETERS AND ENVIRONMENT", "",
             "Transfer matrix: accuracy (%) of every model without attack, per designated model, setting and "
             f"target PSNR; psnr = achieved {name} (dB, {unit}). n = {n}: each accuracy's exact 95% interval is up "
             f"to \u00b1{widest_half_width(n):.1f} points (at 50%; the tables above and results.csv give each one):"]
    matrix = matrix.rename(columns=lambda c: c.removeprefix("zoo:"))
    for designated, part in matrix.groupby("designated", sort=False):
        part = part.drop(columns="designated").dropna(axis=1, how="all")
        lines += ["", f"designated {designated}:", *part.to_string(index=False, na_rep="-", float_format=lambda v:
                                                                   f"{v:.3g}").splitlines()]
    lines += ["", "Encoder settings (every parameter):"]
    cells = results[results.attack == "identity"][["encoder", "encoder_params"]].drop_duplicates()
    lines += [f"- {setting_name(e, p)}: {e} {p}" for e, p in cells.itertuples(index=False)]
    lines += ["", "Attack settings (every parameter; knowledge level):"]
    lines += [f"- {a['type']} [{a.get('knowledge', '?')}]: {json.dumps(a['params'], sort_keys=True)}"
              for a in manifest.get("attacks", [])]
    lines += ["", "Environment:", *(f"- {k}: {v}" for k, v in manifest.get("environment", {}).items())]
    timings = manifest.get("timings", {})
    lines += [f"- device {manifest.get('device')}, batch size {manifest.get('batch_size')}, total "
              f"{timings.get('total_seconds')} s{' (resumed)' if timings.get('resumed') else ''}"]
    examples = "packed soft tokens of the first texts" if modality == "text" else "gallery arrays and PNGs"
    lines += ["", "Files in the run folder: results.csv/.parquet, samples.csv, worst_case.csv, warnings.json, "
              "manifest.json, certificates.csv, lipschitz.csv, angles.csv, certify.json, spectra.csv, "
              f"summary.md, summary.tex, examples/ ({examples})."]
    if notes:
        lines += ["", "Notes:", *(f"- {n}" for n in notes)]
    return lines


@dataclass
class Report:
    """A written report: the PDF, the headline it opens with, and the kind of each page in order."""

    path: Path
    headline: Headline
    pages: list[str]


def write_report(run_dir: str | Path, margin: float | None = None) -> Report:
    """Build ``report.pdf``, ``summary.md``, ``summary.tex``, ``transfer_matrix.csv`` and ``collapse_psnr.csv`` in
    ``run_dir`` from its files alone."""
    run_dir = Path(run_dir)
    results = read_rows(run_dir / RESULTS, COLUMNS)
    manifest = json.loads((run_dir / MANIFEST).read_text())
    worst = read_worst_case(run_dir / WORST_CASE)
    h = headline(run_dir, MARGIN if margin is None else margin, results, worst)
    write_summaries(run_dir, h, f"nte-eval: {manifest.get('suite')}")
    matrix = transfer_matrix(results)
    with atomic_write(run_dir / TRANSFER_MATRIX) as tmp:
        matrix.to_csv(tmp, index=False)
    with atomic_write(run_dir / COLLAPSE_PSNR) as tmp:
        collapse_psnr(results, h.threshold).to_csv(tmp, index=False)
    settings = h.settings
    knowledge = attack_knowledge(manifest)
    accuracy = accuracy_name(h.source, h.label_free)
    spectra = pd.read_csv(run_dir / SPECTRA) if (run_dir / SPECTRA).exists() else pd.DataFrame()
    notes = []
    if len(spectra) and spectra.sigma.isna().all():
        notes.append("No first-layer spectra page: no model has one in spectra.csv (" + "; ".join(
            f"{', '.join(g.model)}: {view}" for view, g in spectra.groupby("view", sort=False)) + ").")
        spectra = pd.DataFrame()
    path = run_dir / REPORT
    with atomic_write(path) as tmp, ReportPages(tmp) as pdf:
        executive_pages(pdf, h, manifest, accuracy)
        decoded = decoded_lines(run_dir, worst, settings, manifest.get("config", {})) if h.modality == "text" else []
        appendix = [*(["DECODED SAMPLES", "", *decoded, ""] if decoded else []), *_appendix(manifest, results,
                                                                                             matrix, notes)]
        _tables_pages(pdf, run_dir, manifest, results, h, appendix)
        accuracy_psnr_pages(pdf, results, worst, h, accuracy)
        heatmap_pages(pdf, results, settings, knowledge, accuracy)
        knowledge_bars_pages(pdf, worst, settings, accuracy)
        adapted = adaptation_lines(results, manifest, accuracy)
        if adapted:
            text_pages(pdf, "adaptation", "Adapting the unauthorized model", adapted)
        if (run_dir / CERTIFY).exists():
            _certify_pages(pdf, run_dir)
        if len(spectra):
            spectra_page(pdf, spectra, _taus(results), list(h.designated.designated))
        if h.modality != "text":
            gallery_pages(pdf, run_dir, worst, settings)
    return Report(path, h, pdf.kinds)


def _taus(results: pd.DataFrame) -> list[float]:
    """The tau thresholds of the run's encoder settings (the default 0.01 if none selects by tau)."""
    selects = {json.loads(p).get("select", "") for p in results.encoder_params.unique()}
    taus = sorted({float(s.split("=")[1]) for s in selects if s.startswith("tau=")})
    return taus or [0.01]
