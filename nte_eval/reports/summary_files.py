"""The headline as plain text (the terminal), Markdown (``summary.md``) and LaTeX with booktabs (``summary.tex``).

All three render the same ``Headline`` tables, so a paper's table, the README and the terminal agree to the digit.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from nte_eval.evaluate.run_folder import SUMMARY_MD, SUMMARY_TEX, atomic_write
from nte_eval.reports.headline import LABEL_FREE, METRICS, Headline, accuracy_name, multiple_choice
from nte_eval.reports.verdict import MAX_CHANCE, MIN_N

PIXEL_PSNR = "PSNR is pixel-space PSNR with peak 1 (= 8-bit PSNR with peak 255)."
UNITS = f"Accuracy in %; {PIXEL_PSNR}"
TEXT_UNITS = ("Accuracy in %; PSNR is token PSNR (peak 1, per stored entry): 10 log10(1/MSE), MSE = squared distance "
              "of each soft token to its clean one-hot row per stored vocabulary entry, over the real tokens; token "
              "recovery = share of tokens whose largest entry is the clean token.")


INTERVALS = ("Each accuracy-like figure is shown with its exact 95% interval (Clopper-Pearson) over its n samples; "
             "p vs no attack: McNemar's exact test of the best attack against no attack on the same samples.")


def units(h: Headline) -> str:
    """What the run's accuracies, PSNRs and (for a text task) its own metric mean, and how sure they are."""
    if h.label_free:
        return f"{LABEL_FREE[0].upper()}{LABEL_FREE[1:]}, in %; {PIXEL_PSNR} {INTERVALS}"
    if h.modality == "text":
        return TEXT_UNITS + (f" {METRICS[h.metric][0]} = {METRICS[h.metric][1]}, on the same predictions as the "
                             "accuracy." if h.metric in METRICS else "") + " " + INTERVALS
    if multiple_choice(h.source):
        return f"Accuracy is {accuracy_name(h.source)} in %; {PIXEL_PSNR} {INTERVALS}"
    return f"{UNITS} {INTERVALS}"


def _fmt(value: object) -> str:
    """Accuracies and dB to one decimal; small ratios in two significant digits; NaN as '-'."""
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.2g}" if 0 < abs(value) < 0.1 else f"{value:.1f}"
    return str(value)


def shown(frame: pd.DataFrame) -> pd.DataFrame:
    """A headline table as the reader sees it: every figure that has an interval column ('X CI') shown with it,
    'X (95% CI)' = '91.2 (84.1\u201395.3)'; the verdicts' numeric bounds left out."""
    out = frame.drop(columns=[c for c in ("CI low %", "CI high %") if c in frame])
    for column in [c for c in out.columns if c.endswith(" CI") and c[:-3] in out]:
        base = column[:-3]
        out[base] = [_fmt(v) if span == "-" else f"{_fmt(v)} ({span})" for v, span in zip(out[base], out[column],
                                                                                            strict=True)]
        out = out.drop(columns=column).rename(columns={base: f"{base} (95% CI)"})
    return out


def sections(h: Headline) -> list[tuple[str, pd.DataFrame]]:
    """The headline tables in report order, each with its caption (which says so when the data is label-free);
    figures shown with their intervals."""
    note = f"({LABEL_FREE[0].upper()}{LABEL_FREE[1:]}.) " if h.label_free else ""
    return [(note + caption, shown(table)) for caption, table in _sections(h)]


def _sections(h: Headline) -> list[tuple[str, pd.DataFrame]]:
    chance = h.chance_text
    cert = h.certification.reset_index() if len(h.certification) else h.certification
    designated = ("Designated models: accuracy on their NTEs (no attack) and the fidelity certificate of exactly that "
                  "setting (best certified Lipschitz source; estimates are not certificates).")
    if h.modality == "text":
        designated = ("Designated models: accuracy on their NTEs (no attack), the NTEs' token PSNR, their storage "
                      "(kB per example, sparse format), the tokens read back right by argmax with no attack and by the "
                      "best attack short of the oracle (named) (text models have no fidelity certificate).")
    metric = (f" {METRICS[h.metric][0]}: the task's own metric, clean, with no attack and under the best single "
              "attack (chosen by accuracy)." if h.metric in METRICS else "")
    return [
        (designated, h.designated),
        ("Robustness for the owner: the designated model's accuracy under the benign (knowledge none) processings of "
         f"its released NTEs, identity aside; within margin = at most {h.margin:g} points below its clean accuracy.",
         h.owner),
        ("Unauthorized models: accuracy with no attack and under the best single attack (the headline: one "
         "reconstruction, committed to without labels); the per-sample union over all attacks is an upper bound "
         "picked with hindsight, so it stands beside the same union on clean inputs. p vs no attack: McNemar's exact "
         "test of the best attack against no attack on the same samples (paired); the best attack is picked after "
         "the fact among all of them, and p is not corrected for that choice." + metric, h.unauthorized),
        ("Best attack at or below each knowledge level (levels are cumulative: an attacker runs every attack of the "
         "levels below its own) and the unauthorized model it helps most. Held = every unauthorized model's 95% "
         "interval under " + (f"its own threshold (chance: {chance}; + {h.margin:g} points)" if h.label_free else
                              f"{h.threshold:.1f}% (chance {chance} + {h.margin:g} points)")
         + "; NOT held = one wholly above it; "
         "inconclusive otherwise, with about the n that would decide; never held when uninformative "
         f"(n < {MIN_N}, one class, chance >= "
         f"{100 * MAX_CHANCE:g}%, or no unauthorized model above the threshold on clean inputs) or not useful (the "
         f"designated model more than {h.margin:g} points below clean).", h.levels),
        ("Spread over the NTE keys (the suite's seeds: every encoder setting encoded once per key, its cells tagged "
         "key=0, 1, ...): mean, standard deviation and range over the keys of the accuracy with no attack and under "
         "the best single attack; each key's own figures, with their intervals, are in the tables above.", h.keys),
        ("Choosing an attack's strength without labels: for each attack swept over its strength, the setting a "
         "method-level attacker commits to by the PSNR at which it restores its own NTEs (public images encoded for a "
         "random surrogate: no labels, no designated model) beside the setting picked with hindsight (by accuracy); "
         "mean accuracy over the unauthorized models (interval over their samples pooled, as if the models' answers "
         "on one image were independent: narrower than it should be).", h.tuning),
        ("Fidelity certificates per PSNR and Lipschitz source (certified % = certified and clean-correct; for an "
         "estimate source, what it would certify if it were a bound; pass must be 100% for a certified source; "
         "tightness = median measured/bound).", cert),
    ]


def _whole(span: str) -> str:
    """'77.4\u201391.2' -> '77\u201391' (the matrices' compact cells)."""
    return span if span == "-" else "\u2013".join(f"{float(v):.0f}" for v in span.split("\u2013"))


def attack_matrices(h: Headline) -> tuple[list[pd.DataFrame], dict[str, str]]:
    """The unauthorized table as compact matrices, one per designated model (setting x unauthorized model), each
    cell 'no attack (95% CI) -> best single attack (95% CI) and its tag', and the attacks' tags."""
    u = h.unauthorized
    names = list(dict.fromkeys(u["best attack"]))
    tags = {name: chr(ord("a") + i) if i < 26 else f"#{i}" for i, name in enumerate(names)}
    cell = [f"{r['no attack %']:.0f} ({_whole(r['no attack % CI'])})\u2192{r['best attack %']:.0f}"
            f"{tags[r['best attack']]} ({_whole(r['best attack % CI'])})" for _, r in u.iterrows()]
    u = u.assign(cell=cell, model=u.model.str.removeprefix("zoo:"))
    matrices = []
    for designated, part in u.groupby("designated", sort=False):
        m = part.pivot_table(index="setting", columns="model", values="cell", aggfunc="first", sort=False)
        m.index.name, m.columns.name = f"{designated.removeprefix('zoo:')} (designated)", None
        matrices.append(m)
    return matrices, tags


def matrix_lines(h: Headline) -> list[str]:
    """The compact unauthorized matrices with their caption and the attack tags, as text lines."""
    matrices, tags = attack_matrices(h)
    lines = ["Unauthorized models (accuracy %, 95% CI in brackets): no attack \u2192 best single attack, tagged "
             "(the unions over all attacks are in the unauthorized table); the tags:",
             "  " + "; ".join(f"{t} = {n}" for n, t in tags.items())]
    for m in matrices:
        lines += ["", *m.to_string().splitlines()]
    return lines


def table_lines(frame: pd.DataFrame) -> list[str]:
    """A table as aligned text lines, formatted as in the Markdown and LaTeX files."""
    return frame.to_string(index=False, na_rep="-", formatters={c: _fmt for c in frame.columns}).splitlines()


def text(h: Headline) -> str:
    """The headline for the terminal: the designated models, the unauthorized matrices and the verdicts (the long
    tables are in summary.md and the report)."""
    caption, table = sections(h)[0]
    out = [units(h), "", caption, *table_lines(table), "", *matrix_lines(h)]
    out += ["", "Verdicts:", *(f"- {v}" for v in h.verdicts)]
    out += ["", f"Sanity-check warnings: {len(h.warnings)}", *(f"- [{w['check']}] {w['message']}" for w in h.warnings)]
    return "\n".join(out)


def _md_escape(value: str) -> str:
    return value.replace("|", "\\|")


def markdown(h: Headline, title: str) -> str:
    """The headline as GitHub-flavoured Markdown."""
    out = [f"# {title}", "", units(h)]
    for caption, table in sections(h):
        if not len(table):
            continue
        out += ["", caption, "", "| " + " | ".join(map(_md_escape, table.columns)) + " |",
                "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(table[c]) else "---" for c in table.columns)
                + "|"]
        out += ["| " + " | ".join(_md_escape(_fmt(v)) for v in row) + " |" for row in table.itertuples(index=False)]
    out += ["", "## Verdicts", "", *(f"- {_md_escape(v)}" for v in h.verdicts)]
    out += ["", f"## Sanity-check warnings ({len(h.warnings)})", ""]
    out += [f"- [{w['check']}] {_md_escape(w['message'])}" for w in h.warnings] or ["None."]
    return "\n".join(out) + "\n"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"$<$",
                 ">": r"$>$"}


def tex_escape(value: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in value)


def latex(h: Headline, title: str) -> str:
    """The headline as LaTeX tables (needs ``\\usepackage{booktabs}``), one ``table`` environment each."""
    out = [f"% {title}: generated by nte-eval from the run's files. Needs \\usepackage{{booktabs}}.",
           f"% {units(h)}"]
    for caption, table in sections(h):
        if not len(table):
            continue
        align = "".join("r" if pd.api.types.is_numeric_dtype(table[c]) else "l" for c in table.columns)
        out += ["", r"\begin{table}[ht]", r"\centering", r"\scriptsize", rf"\begin{{tabular}}{{{align}}}",
                r"\toprule", " & ".join(tex_escape(c) for c in table.columns) + r" \\", r"\midrule"]
        out += [" & ".join(tex_escape(_fmt(v)) for v in row) + r" \\" for row in table.itertuples(index=False)]
        out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{tex_escape(caption + ' ' + units(h))}}}",
                r"\end{table}"]
    out += ["", r"\begin{itemize}", *(rf"\item {tex_escape(v)}" for v in h.verdicts), r"\end{itemize}"]
    return "\n".join(out) + "\n"


def write_summaries(run_dir: Path, h: Headline, title: str) -> list[Path]:
    """Write ``summary.md`` and ``summary.tex`` into ``run_dir``."""
    written = []
    for name, render in ((SUMMARY_MD, markdown), (SUMMARY_TEX, latex)):
        path = Path(run_dir) / name
        with atomic_write(path) as tmp:
            tmp.write_text(render(h, title))
        written.append(path)
    return written

