"""The data sources a suite can name, in one table: what each holds, which ``data.*`` keys it needs, how it loads,
how its answers are scored, and whether the certification applies. Suite validation, loading, the runner and the
report all read this table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nte_eval.data.glue import TASKS
from nte_eval.data.images import ImageSet, load_digits, load_imagefolder, load_photos
from nte_eval.data.photos import load_real_photos
from nte_eval.data.textures import load_textures
from nte_eval.errors import NTEError, did_you_mean

# A pixel loader: (split, limit, root, size, channels) -> labelled images at ``size``.
PixelLoader = Callable[[str, int | None, str | None, int | None, int], ImageSet]


def _digits(split: str, limit: int | None, root: str | None, size: int | None, channels: int) -> ImageSet:
    return load_digits(split, limit, size or 32)


def _textures(split: str, limit: int | None, root: str | None, size: int | None, channels: int) -> ImageSet:
    return load_textures(split, limit, size or 32)


def _photos(split: str, limit: int | None, root: str | None, size: int | None, channels: int) -> ImageSet:
    return load_photos(size or 224, limit)


def _real_photos(split: str, limit: int | None, root: str | None, size: int | None, channels: int) -> ImageSet:
    return load_real_photos(split, size or 224, limit)


def _imagefolder(split: str, limit: int | None, root: str | None, size: int | None, channels: int) -> ImageSet:
    if size is None:
        raise NTEError("imagefolder: data.size is required (the model's input size).")
    return load_imagefolder(root, size, limit, channels)


@dataclass(frozen=True)
class Source:
    """One kind of data source."""

    name: str
    modality: str  # "image" (pixels) or "text" (packed soft tokens)
    needs: tuple[str, ...] = ()  # the data.* keys it requires
    scoring: str = "accuracy"  # "accuracy", "multiple_choice" (A-D answers of a VLM) or "glue" (the task's metric)
    certifiable: bool = True  # fidelity certificates and the degradation study cover image classifiers only
    description: str = ""
    #: Plain pixel sources load here; the TSV sources need their models (a tokenizer, VLM questions) and load in
    #: ``nte_eval.evaluate.inputs``.
    pixels: PixelLoader | None = None
    bundled: bool = False  # ships with the installed packages (no path needed)

    @property
    def unit(self) -> str:
        """What one example is called in progress lines."""
        return "texts" if self.modality == "text" else "images"

    def metric(self, task: str | None = None) -> str:
        """The metric the results carry beside accuracy: a GLUE task's own (``mcc``, ``f1``), else ``accuracy``."""
        return TASKS[task].metric if self.scoring == "glue" else "accuracy"


SOURCES = {s.name: s for s in (
    Source("digits", "image", description="scikit-learn's digits, coloured", pixels=_digits, bundled=True),
    Source("textures", "image", description="crops of scikit-image's photos, 10 classes (natural images)",
           pixels=_textures, bundled=True),
    Source("photos", "image", description="scikit-image's sample photos, no labels", pixels=_photos, bundled=True),
    Source("real_photos", "image", description="20 real photos shipped by scikit-image, scikit-learn and matplotlib "
           "and 100 LFW faces (split test), the other 100 faces (train); no labels", pixels=_real_photos,
           bundled=True),
    Source("imagefolder", "image", ("root",), description="a folder ROOT/CLASS/*.png|jpg (labelled) or ROOT/*.png|jpg "
           "(label-free)", pixels=_imagefolder),
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
    """A plain pixel source (one whose row has a ``pixels`` loader) at ``size``."""
    kind = source(name)
    if kind.pixels is None:
        plain = [s.name for s in SOURCES.values() if s.pixels is not None]
        raise NTEError(f"data source {name!r} loads with its models, not as plain pixels; use one of "
                       f"{', '.join(plain)}.")
    if "root" in kind.needs and root is None:
        raise NTEError(f"{name}: data.root is required ({kind.description}).")
    return kind.pixels(split, limit, root, size, channels)
