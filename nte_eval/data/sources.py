"""The data sources a suite can name, in one table: what each holds, which ``data.*`` keys it needs, how its answers
are scored, and whether the certification applies. Suite validation, loading and the report all read this table."""

from __future__ import annotations

from dataclasses import dataclass

from nte_eval.data.glue import TASKS
from nte_eval.data.images import ImageSet, load_digits, load_imagefolder, load_photos
from nte_eval.errors import NTEError, did_you_mean


@dataclass(frozen=True)
class Source:
    """One kind of data source."""

    name: str
    modality: str  # "image" (pixels) or "text" (packed soft tokens)
    needs: tuple[str, ...] = ()  # the data.* keys it requires
    scoring: str = "accuracy"  # "accuracy", "multiple_choice" (A-D answers of a VLM) or "glue" (the task's metric)
    certifiable: bool = True  # fidelity certificates and the degradation study cover image classifiers only
    description: str = ""

    @property
    def unit(self) -> str:
        """What one example is called in progress lines."""
        return "texts" if self.modality == "text" else "images"

    def metric(self, task: str | None = None) -> str:
        """The metric the results carry beside accuracy: a GLUE task's own (``mcc``, ``f1``), else ``accuracy``."""
        return TASKS[task].metric if self.scoring == "glue" else "accuracy"


SOURCES = {s.name: s for s in (
    Source("digits", "image", description="scikit-learn's digits, coloured (bundled)"),
    Source("photos", "image", description="scikit-image's sample photos (bundled, no labels)"),
    Source("imagefolder", "image", ("root",), description="a folder ROOT/CLASS/*.png|jpg"),
    Source("glue_tsv", "text", ("path", "task"), "glue", False, "a GLUE task's TSV file"),
    Source("mmbench_tsv", "image", ("path",), "multiple_choice", False, "an MMBench TSV for hf-vlm: models"),
)}


def source(name: str) -> Source:
    """The source called ``name``; an NTEError with a 'did you mean' otherwise."""
    if name not in SOURCES:
        raise NTEError(f"unknown data source {name!r}; use one of {', '.join(SOURCES)}.{did_you_mean(name, SOURCES)}")
    return SOURCES[name]


def load_pixels(name: str, split: str = "test", limit: int | None = None, root: str | None = None,
                size: int | None = None, channels: int = 3) -> ImageSet:
    """A labelled pixel source (``digits``, ``photos``, ``imagefolder``) at ``size``; the TSV sources need their
    models (a tokenizer, VLM questions) and load through ``nte_eval.evaluate.inputs``."""
    if name == "digits":
        return load_digits(split, limit, size or 32)
    if name == "photos":
        return load_photos(size or 224, limit)
    if name == "imagefolder":
        if root is None:
            raise NTEError("imagefolder: data.root is required (a folder ROOT/CLASS/*.png).")
        if size is None:
            raise NTEError("imagefolder: data.size is required (the model's input size).")
        return load_imagefolder(root, size, limit, channels)
    raise NTEError(f"data source {source(name).name!r} is not a plain pixel source; "
                   f"use one of digits, photos, imagefolder.")
