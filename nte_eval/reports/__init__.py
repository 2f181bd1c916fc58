"""Reports built from a run's files: the PDF and its tables."""

from nte_eval.reports.pdf import write_report

__all__ = ["write_report"]
