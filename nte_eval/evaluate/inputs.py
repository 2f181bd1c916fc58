"""A run's inputs: its models, its evaluated data at the designated model's input size, and the attackers' public
data, checked to be disjoint from the evaluated data."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

from nte_eval.data.files import FileImages, TransformFile
from nte_eval.data.glue import load_glue_tsv
from nte_eval.data.images import ImageSet, check_images
from nte_eval.data.mmbench import load_mmbench_tsv
from nte_eval.data.sources import load_pixels, source
from nte_eval.errors import NTEError
from nte_eval.evaluate.sections import DataConfig
from nte_eval.evaluate.suite import Suite
from nte_eval.models.handle import ModelHandle
from nte_eval.models.load import load_model, size_key, spec_name
from nte_eval.models.transform import eval_transform, resolved


def load_models(suite: Suite, device: str) -> dict[str, ModelHandle]:
    """Load every model named in the suite once, keyed by display name (its relative paths read from the suite
    file's folder)."""
    handles: dict[str, ModelHandle] = {}
    for spec in [*suite.designated_list(), *suite.models, *suite.surrogates]:
        name = spec_name(spec)
        if name not in handles:
            clean = {k: v for k, v in spec.items() if k != "name"} if isinstance(spec, dict) else spec
            handle = load_model(suite.model_spec(clean))
            handle.spec = name
            handles[name] = handle.to(device)
    return handles


def load_suite_data(suite: Suite, handles: dict[str, ModelHandle]) -> ImageSet:
    """Load the suite's data (at ``data_size``), set the models that take any input size to its size, and check that
    every other model takes it."""
    first = handles[spec_name(suite.designated_list()[0])]
    d = suite.data
    kind = source(d.source)
    if kind.modality == "text":
        return load_text_data(suite, handles)
    if first.modality != "image":
        raise NTEError(f"data source {d.source!r} holds images, but the designated model {first.spec} is a text model.")
    c, h, _ = first.input_size
    size, origin = data_size(suite, handles)
    if kind.scoring == "multiple_choice":
        data = load_mmbench_tsv(suite.path(d.path), d.size or h, d.limit)
        for name, handle in handles.items():
            if not hasattr(handle, "bind"):
                raise NTEError(f"model {name} is not a vision-language model; {d.source} questions need hf-vlm: "
                               "models for every role.")
            handle.bind(data.extras)
    else:
        data = load_pixels(d.source, d.split, d.limit, suite.path(d.root), size, c)
    _prepare(data, d, f"data ({d.source})", c, first)
    shape = tuple(data.images.shape[1:])
    for name, handle in handles.items():
        if handle.modality != "image":
            raise NTEError(f"model {name} is a text model but the data ({d.source}) holds images.")
        if getattr(handle, "resizes_input", False) and name != first.spec:
            continue  # a VLM resizes what it is given (its processor would); the designated one gets its own size
        if handle.input_size == shape:
            continue
        if not (handle.any_size and handle.input_size[0] == c):
            raise NTEError(size_mismatch(suite, name, handle, shape, origin))
        handle.resize(*shape[1:])
    if d.labels == "none":
        data.labels = torch.full_like(data.labels, -1)
    known = data.labels >= 0
    if known.any() and not known.all():
        raise NTEError(f"data ({d.source}): {int((~known).sum())} of {len(known)} samples have no label and the others "
                       "have one; give every sample a label, or set data.labels: none to evaluate label-free (every "
                       "model scored by agreement with its own clean prediction).")
    return data


def data_size(suite: Suite, handles: dict[str, ModelHandle]) -> tuple[int | None, str]:
    """The height and width image data loads at, and where it comes from: ``data.size``, else the input size of the
    first model (designated first) that takes one size only, else (for files) the size timm evaluates the designated
    model at, else None: the source's own (digits: 32). Models that take any size follow the data."""
    fixed = next((name for name, h in handles.items() if h.modality == "image" and not h.any_size), None)
    if suite.data.size:
        return suite.data.size, "data.size"
    if fixed:
        return handles[fixed].input_size[1], f"the input size of {fixed}"
    first = handles[spec_name(suite.designated_list()[0])]
    if first.data_config is not None and not source(suite.data.source).bundled:  # files: timm's evaluation size
        return first.data_config["input_size"][1], f"the timm data config of {first.spec}"
    return None, f"the {suite.data.source} default"


def size_mismatch(suite: Suite, name: str, handle: ModelHandle, shape: tuple[int, ...], origin: str) -> str:
    """The message for a model that cannot take the data's shape: where that shape came from and, where the model's
    spec has one, the key that builds the model at it (``input_size``, or a timm model's ``kwargs: {img_size}``)."""
    where, spec = next((w, s) for w, s in suite.model_entries() if spec_name(s) == name)
    if handle.input_size[0] != shape[0]:
        return (f"model {name} ({where}) takes {handle.input_size[0]}-channel images, but the data has {shape[0]} "
                "channels (the designated model's); use models of one channel count.")
    key = size_key(spec, shape)
    rebuild = f"if its weights are for {shape[1]}x{shape[2]} images, set {key}; else " if key else ""
    return (f"model {name} ({where}) takes only {'x'.join(map(str, handle.input_size))} images, but the data is "
            f"{'x'.join(map(str, shape))} ({origin}); {rebuild}give the models one input size (data.size: "
            f"{handle.input_size[1]} suits {name}).")


def load_text_data(suite: Suite, handles: dict[str, ModelHandle]) -> ImageSet:
    """A GLUE TSV file tokenised by the designated model's tokenizer, as packed clean tokens; every text model in the
    suite must share that vocabulary (soft tokens are rows over it)."""
    d = suite.data
    designated = handles[spec_name(suite.designated_list()[0])]
    for name, handle in handles.items():
        if handle.modality != "text":
            raise NTEError(f"model {name} is an image model but the data ({d.source}) is text; use hf-text: models.")
        if handle.vocabulary != designated.vocabulary or handle.vocab_size != designated.vocab_size:
            raise NTEError(f"tokenizer mismatch: {name} (vocabulary {handle.vocabulary}, {handle.vocab_size} "
                           f"rows) and the designated {designated.spec} (vocabulary {designated.vocabulary}, "
                           f"{designated.vocab_size} rows) do not share one vocabulary, so the same soft tokens mean "
                           "different words to them. Compare models over one tokenizer (e.g. all BERT uncased).")
    text = load_glue_tsv(suite.path(d.path), d.task, d.limit)
    limit = getattr(designated.module.config, "max_position_embeddings", None)
    if limit is not None and d.max_length > limit:
        raise NTEError(f"data.max_length {d.max_length} exceeds {designated.spec}'s {limit} positions; lower it.")
    designated.max_length = d.max_length
    packed = designated.tokenize(text.texts, text.pairs)
    segments = designated.segment_ids(text.texts, text.pairs)
    extras = [{"text": t, "pair": p, "segments": s}
              for t, p, s in zip(text.texts, text.pairs or [None] * len(text.texts), segments, strict=True)]
    for handle in handles.values():
        handle.bind(extras)  # sentence pairs: every BERT-style model reads the same segment ids
    return ImageSet(packed, text.labels, text.class_names, text.names, extras, "text")


def load_public_text(suite: Suite, data: ImageSet, designated: ModelHandle) -> ImageSet | None:
    """The attackers' public clean texts (a GLUE TSV), tokenised like the data; none may be an evaluated text."""
    cfg = suite.public
    if cfg is None:
        return None
    if cfg.kind.modality != "text" or not cfg.path:
        raise NTEError("public: text attackers' public data is a GLUE TSV: {source: glue_tsv, path: train.tsv}.")
    text = load_glue_tsv(suite.path(cfg.path), cfg.task or suite.data.task, cfg.limit)
    evaluated = {(e["text"], e["pair"]) for e in data.extras}
    overlap = sum((t, p) in evaluated for t, p in zip(text.texts, text.pairs or [None] * len(text.texts),
                                                     strict=True))
    if overlap:
        raise NTEError(f"{overlap} public text(s) are also evaluated texts; the attackers' public texts must be "
                       "disjoint from the data (e.g. data dev.tsv, public train.tsv).")
    return ImageSet(designated.tokenize(text.texts, text.pairs), text.labels, text.class_names, text.names,
                    modality="text")


def load_public(suite: Suite, data: ImageSet, designated: ModelHandle) -> ImageSet | None:
    """The attackers' public clean images at the data's size; an error if any of them is an evaluated image."""
    if data.modality == "text":
        return load_public_text(suite, data, designated)
    cfg = suite.public_config()
    if cfg is None:
        return None
    c, h, _ = data.images.shape[1:]
    public = load_pixels(cfg.source, cfg.split, cfg.limit, suite.path(cfg.root), cfg.size or h, c)
    _prepare(public, cfg, f"public ({cfg.source})", c, designated)
    if tuple(public.images.shape[1:]) != tuple(data.images.shape[1:]):
        raise NTEError(f"public images are {tuple(public.images.shape[1:])} but the data is "
                       f"{tuple(data.images.shape[1:])}; set public.size.")
    seen = set(_digests(data.images))
    overlap = sum(digest in seen for digest in _digests(public.images))
    if overlap:
        raise NTEError(f"{overlap} public image(s) are also evaluated images; the attackers' public images must be "
                       f"disjoint from the data (e.g. data split 'test', public split 'train').")
    return public


def _prepare(data: ImageSet, cfg: DataConfig, what: str, channels: int, designated: ModelHandle) -> None:
    """Check images held in memory (files are checked as they are read); give files their readers and, unless
    ``transform: resize`` (or the designated model is not one timm built, under ``auto``), timm's evaluation
    transform of the designated model."""
    if not isinstance(data.images, FileImages):
        check_images(data.images, what, channels=channels)
        return
    data.images.workers = cfg.workers
    overrides = cfg.transform if isinstance(cfg.transform, dict) else {}
    if cfg.transform == "resize" or (cfg.transform == "auto" and designated.data_config is None):
        data.transform = {"resize": int(data.images.shape[-1])}
        return
    config = resolved(designated.data_config, overrides, int(data.images.shape[-1]), channels)
    data.images.prepare = TransformFile(eval_transform(config), channels)
    data.transform = config


def _digests(images: torch.Tensor | FileImages, chunk: int = 256) -> Iterator[bytes]:
    """Each image's 8-bit content hash, read ``chunk`` images at a time (a large imagefolder is never held whole)."""
    for i in range(0, len(images), chunk):
        for x in images[i:i + chunk]:
            yield hashlib.sha1(torch.round(x * 255).to(torch.uint8).numpy().tobytes()).digest()
