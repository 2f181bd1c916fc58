"""Model specs: the grammar (``zoo:NAME``, ``timm:NAME[@ckpt]``, ``hf:PATH``, mappings, factories) and dispatch to
each scheme."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nte_eval.errors import NTEError, did_you_mean
from nte_eval.models import hf
from nte_eval.models.checkpoint import apply_checkpoint
from nte_eval.models.factory import FACTORY_KEYS, check_factory_spec, from_factory
from nte_eval.models.handle import IMAGENET_MEAN, IMAGENET_STD, ModelHandle, check_runs
from nte_eval.models.hf import HF_SCHEMES
from nte_eval.models.transform import data_config
from nte_eval.models.zoo import load_zoo_model

ModelSpec = str | dict[str, Any]


def from_timm(name: str, checkpoint: str | None = None, kwargs: dict[str, Any] | None = None,
              mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
              first_layer: str | None = None, input_size: tuple[int, int, int] | None = None,
              spec: str | None = None) -> ModelHandle:
    """Build a timm model (random init, no download) and optionally load a local checkpoint.

    Without ``input_size`` or ``kwargs: {img_size}``, a model timm does not mark ``fixed_input_size`` (a CNN with
    global pooling) takes any size: its handle follows the data's (``ModelHandle.resize``). A given ``input_size``
    is checked with one forward pass."""
    import timm

    spec = spec or f"timm:{name}" + (f"@{checkpoint}" if checkpoint else "")
    kwargs = dict(kwargs or {})
    if not timm.is_model(name):
        raise NTEError(f"unknown timm model {name!r}.{did_you_mean(name, timm.list_models())}")
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        raise NTEError(f"{spec}: timm rejected kwargs {kwargs}: {e}") from None
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    if checkpoint:
        apply_checkpoint(model, checkpoint, spec)
    declared = input_size is not None
    any_size = not declared and "img_size" not in kwargs and not cfg.get("fixed_input_size", False)
    if input_size is None:
        input_size = tuple(cfg.get("input_size", (3, 224, 224)))
        if "img_size" in kwargs:
            s = kwargs["img_size"]
            input_size = (input_size[0], *((s, s) if isinstance(s, int) else s))
        if "in_chans" in kwargs:
            input_size = (kwargs["in_chans"], *input_size[1:])
    c = input_size[0]
    mean = tuple(mean if mean is not None else cfg.get("mean", IMAGENET_MEAN))
    std = tuple(std if std is not None else cfg.get("std", IMAGENET_STD))
    if len(mean) != c and len(mean) == 3 and c == 1:  # timm keeps RGB stats for in_chans=1 models
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    first = first_layer or cfg.get("first_conv")
    if first is None:
        raise NTEError(f"{spec}: timm's pretrained_cfg has no 'first_conv'; pass first_layer= explicitly.")
    if isinstance(first, (tuple, list)):
        raise NTEError(f"{spec}: pretrained_cfg['first_conv'] is a tuple {tuple(first)} (parallel stem branches); "
                       "nte-eval needs a single first linear operator. Pass first_layer= one Conv2d path.")
    num = getattr(model, "num_classes", None)
    names = [str(i) for i in range(num)] if isinstance(num, int) and num > 0 else None
    handle = ModelHandle(model, first, mean, std, input_size, names, spec, any_size)
    handle.data_config = data_config(model)  # how timm prepares its evaluation images
    if declared:
        check_runs(handle, "input_size must be a size it takes; a fixed-size model (a ViT, say) is built for "
                           "another with kwargs: {img_size: N}")
    return handle


SCHEMES = ("zoo", "timm", *HF_SCHEMES)
TIMM_KEYS = ("timm", "checkpoint", "kwargs", "mean", "std", "first_layer", "input_size", "name")


def _numbers(value: Any) -> bool:
    """A non-empty list of numbers (a boolean is not one)."""
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def check_spec(spec: ModelSpec) -> None:
    """Check a spec's form without loading anything; NTEError names the bad key and what it takes."""
    if isinstance(spec, str):
        scheme = spec.partition(":")[0]
        if ":" not in spec:
            raise NTEError(f"model spec {spec!r} must be 'zoo:NAME', 'timm:NAME[@checkpoint]' or a mapping.")
        if scheme not in SCHEMES:
            raise NTEError(f"model spec {spec!r}: unknown scheme {scheme!r}.{did_you_mean(scheme, SCHEMES)} "
                           "Use 'zoo:NAME', 'timm:NAME[@checkpoint]', 'hf:PATH', 'hf-vlm:PATH' or 'hf-text:PATH'.")
        return
    if not isinstance(spec, dict):
        raise NTEError(f"model spec {spec!r} must be 'zoo:NAME', 'timm:NAME[@checkpoint]' or a mapping.")
    scheme = next((k for k in ("zoo", *HF_SCHEMES, "factory", "timm") if k in spec), None)
    if scheme is None:
        raise NTEError(f"model mapping {spec} needs a 'timm' key (or 'factory', 'zoo'); e.g. {{timm: "
                       "vit_small_patch16_224, checkpoint: weights.safetensors, kwargs: {num_classes: 10}}.")
    allowed = {"timm": TIMM_KEYS, "factory": FACTORY_KEYS, "zoo": ("zoo", "name", "input_size")}.get(scheme,
                                                                                                 (scheme, "name"))
    extra = sorted(set(spec) - set(allowed))
    if extra:
        raise NTEError(f"model mapping: unknown key {extra[0]!r}; a {scheme} model takes {', '.join(allowed)}."
                       f"{did_you_mean(extra[0], allowed)}")
    for key in ("mean", "std"):  # null: the model's own
        if spec.get(key) is not None and not _numbers(spec[key]):
            raise NTEError(f"{key}: {spec[key]!r} is not a list of numbers, one per input channel (e.g. "
                           f"{list(IMAGENET_MEAN if key == 'mean' else IMAGENET_STD)}).")
    if spec.get("std") is not None and min(spec["std"]) <= 0:
        raise NTEError(f"std: {spec['std']!r} must be positive (it divides the pixels).")
    size = spec.get("input_size")
    if size is not None and not (_numbers(size) and len(size) == 3 and all(isinstance(v, int) and v >= 1
                                                                            for v in size)):
        raise NTEError(f"input_size: {size!r} is not [channels, height, width], three positive integers (e.g. "
                       "[3, 224, 224]).")
    if not isinstance(spec.get("kwargs") or {}, dict):
        takes = "the factory's" if scheme == "factory" else "timm.create_model"
        raise NTEError(f"kwargs: {spec['kwargs']!r} is not a mapping of {takes} arguments (e.g. {{num_classes: 10}}).")
    if scheme == "factory":
        check_factory_spec(spec)


def spec_files(spec: ModelSpec) -> dict[str, str]:
    """The local paths a spec names, by key: ``checkpoint`` (a file) or its Hugging Face scheme (a folder)."""
    if isinstance(spec, str):
        scheme, _, rest = spec.partition(":")
        if scheme == "timm" and "@" in rest:
            return {"checkpoint": rest.partition("@")[2]}
        return {scheme: rest} if scheme in HF_SCHEMES else {}
    return {k: str(spec[k]) for k in ("checkpoint", *HF_SCHEMES) if spec.get(k)}


def read_from(base: Path, path: str) -> str:
    """``path`` as read from the folder ``base`` (a suite file's folder): relative paths join it, ``~`` is home."""
    return str(base / Path(path).expanduser())


def with_base(spec: ModelSpec, base: Path) -> ModelSpec:
    """``spec`` with its relative paths read from the folder ``base`` (see ``read_from``)."""
    files = {k: read_from(base, v) for k, v in spec_files(spec).items()}
    if isinstance(spec, dict):
        return {**spec, **files}
    if "checkpoint" in files:
        return f"{spec.partition('@')[0]}@{files['checkpoint']}"
    scheme = spec.partition(":")[0]
    return f"{scheme}:{files[scheme]}" if scheme in files else spec


def load_model(spec: ModelSpec) -> ModelHandle:
    """Build a handle from ``zoo:NAME``, ``timm:NAME[@checkpoint]``, ``hf:PATH`` (image classifier), ``hf-vlm:PATH``
    (a vision-language model's vision tower), ``hf-text:PATH`` (text classifier) or a mapping ``{timm: NAME, ...}``
    or ``{factory: "package.module:callable", ...}``."""
    check_spec(spec)
    if isinstance(spec, dict):
        if "factory" in spec:
            return from_factory(spec, spec_name(spec))
        if "zoo" in spec:  # with input_size: a convolutional zoo model (global pooling) evaluated at another size
            handle = load_model(f"zoo:{spec['zoo']}")
            size = spec.get("input_size")
            return handle.rebuild_at(*size[1:]) if size and tuple(size) != handle.input_size else handle
        scheme = next((k for k in HF_SCHEMES if k in spec), None)
        if scheme:
            return load_model(f"{scheme}:{spec[scheme]}")
        inp = spec.get("input_size")
        return from_timm(spec["timm"], spec.get("checkpoint"), spec.get("kwargs"), spec.get("mean"), spec.get("std"),
                         spec.get("first_layer"), tuple(inp) if inp else None)
    scheme, _, rest = spec.partition(":")
    if scheme == "zoo":
        return load_zoo_model(rest)
    if scheme == "timm":
        name, _, ckpt = rest.partition("@")
        return from_timm(name, ckpt or None)
    return hf.load(scheme, rest)


def _timm_mapping(spec: ModelSpec) -> dict[str, Any] | None:
    """A timm spec in mapping form (``timm:NAME@PATH`` is ``{timm: NAME, checkpoint: PATH}``); None for others."""
    if isinstance(spec, dict):
        return spec if "timm" in spec else None
    scheme, _, rest = spec.partition(":")
    name, _, checkpoint = rest.partition("@")
    return {"timm": name, **({"checkpoint": checkpoint} if checkpoint else {})} if scheme == "timm" else None


def spec_name(spec: ModelSpec) -> str:
    """A model's display name, its key in the results: the mapping's ``name``, else ``zoo:NAME``, ``hf:PATH``,
    ``timm:NAME``, or ``NAME@STEM`` for a timm checkpoint (its file name without folders and suffix), so that tables
    stay narrow; likewise ``CALLABLE@STEM`` for a factory with a checkpoint, else the factory. It depends on the spec
    alone; the suite refuses two models under one name."""
    if isinstance(spec, dict):
        if "name" in spec:
            return str(spec["name"])
        if "factory" in spec:
            checkpoint = spec.get("checkpoint")
            target = str(spec["factory"])
            return f"{target.partition(':')[2]}@{Path(str(checkpoint)).stem}" if checkpoint else target
        for scheme in ("zoo", *HF_SCHEMES):
            if scheme in spec:
                return f"{scheme}:{spec[scheme]}"
    timm = _timm_mapping(spec)
    if timm is None:
        return str(spec)
    checkpoint = timm.get("checkpoint")
    return f"{timm['timm']}@{Path(str(checkpoint)).stem}" if checkpoint else f"timm:{timm['timm']}"


def size_key(spec: ModelSpec, size: tuple[int, ...]) -> str | None:
    """Where a spec sets its model's input size, filled in for ``size`` (C, H, W): the ``input_size`` it gives (a
    factory's always), else a timm model's ``kwargs: {img_size}``; None for zoo and Hugging Face models, whose size is
    their own."""
    c, h, w = size
    if isinstance(spec, dict) and "factory" in spec:
        return f"`input_size: [{c}, {h}, {w}]` in its spec"
    timm = _timm_mapping(spec)
    if timm is None:
        return None
    if timm.get("input_size"):
        return f"`input_size: [{c}, {h}, {w}]` in its spec"
    kwargs = {**(timm.get("kwargs") or {}), "img_size": h if h == w else [h, w]}
    flow = f"kwargs: {{{', '.join(f'{k}: {v}' for k, v in kwargs.items())}}}"
    if isinstance(spec, dict):
        return f"`{flow}` in its spec"
    checkpoint = f"checkpoint: {timm['checkpoint']}, " if "checkpoint" in timm else ""
    return f"its spec to `{{timm: {timm['timm']}, {checkpoint}{flow}}}`"
