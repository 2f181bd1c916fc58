"""The encoder interface shared by NTEs and the baselines, plus keyed noise and the pixel-box options."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field

from nte_eval.errors import NTEError
from nte_eval.metrics import mse, noise_norm_for_psnr, psnr_from_mse, relative_change
from nte_eval.models.handle import ModelHandle
from nte_eval.params import Parametrised
from nte_eval.registry import Registry

ENCODERS: Registry[Encoder] = Registry("encoder", "nte_eval.encoders", "nte_eval.encoders")

#: A PSNR target in dB (pixel space, peak 1): finite, in the meaningful range [-40, 100] dB (at -40 dB the noise
#: already dwarfs any image).
PSNR = Annotated[float, Field(ge=-40, le=100, allow_inf_nan=False)]


@dataclass
class EncodeResult:
    """Encoded images plus per-sample records (achieved PSNR, first-layer response ratio) and settings."""

    images: torch.Tensor
    psnr: torch.Tensor
    first_layer_ratio: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def storable(self) -> bool:
        """True when the images are valid 8-bit images (in [0, 1] and on the 1/255 grid)."""
        return bool(self.info.get("storable", False))


def sample_seed(key: int | str, index: int) -> int:
    """A 63-bit seed from the NTE key and the sample index: together they fix the sample's noise bit for bit."""
    digest = hashlib.sha256(f"nte-eval/{key}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def keyed_normal(shape: tuple[int, ...], key: int | str, index: torch.Tensor | list[int],
                 device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise of ``(len(index), *shape)``, each row drawn from its own (key, index) generator."""
    out = torch.empty((len(index), *shape), device=device, dtype=dtype)
    gen = torch.Generator(device=device)
    for row, i in enumerate(index):
        gen.manual_seed(sample_seed(key, int(i)))
        out[row] = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    return out


def scale_to_psnr(delta: torch.Tensor, psnr_db: float) -> torch.Tensor:
    """Scale each sample's perturbation so that its pixel-space PSNR (peak 1) is exactly ``psnr_db``."""
    target = noise_norm_for_psnr(psnr_db, delta[0].numel())
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-30)
    return delta * (target / norms).view(-1, *([1] * (delta.dim() - 1)))


def check_box(box: str, quantize: bool) -> None:
    """8-bit quantization needs a box: a storable image lies in [0, 1]."""
    if quantize and box == "none":
        raise NTEError("quantize=true needs box='clip' or 'project': 8-bit images must lie in [0, 1].")


def dykstra(x0: torch.Tensor, project_a: Callable[[torch.Tensor], torch.Tensor], iters: int) -> torch.Tensor:
    """Dykstra's alternating projections toward the nearest point of A (``project_a``) within the box [0, 1].

    Returns the last iterate on A (exactly in A, approximately in the box): callers shrink it into the box.
    """
    y, p, q = x0, torch.zeros_like(x0), torch.zeros_like(x0)
    z = project_a(y)
    for _ in range(iters):
        z = project_a(y + p)
        p = y + p - z
        y = (z + q).clamp(0, 1)
        q = z + q - y
    return z


def box_scale(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Largest t in [0, 1] per element with x + t * delta in [0, 1] (x itself must lie in [0, 1])."""
    room = torch.where(delta > 0, (1 - x) / delta.clamp_min(1e-30), x / (-delta).clamp_min(1e-30))
    return torch.where(delta == 0, torch.ones_like(x), room.clamp(0, 1))


def finish(clean: torch.Tensor, encoded: torch.Tensor, handle: ModelHandle, quantize: bool,
           info: dict[str, Any], record: bool = True, noise_norm: torch.Tensor | None = None) -> EncodeResult:
    """Optionally quantize to 8 bit, then measure PSNR and (if ``record``) the first-layer response ratio.

    ``noise_norm``: the L2 norm of the perturbation actually added, when it is known (saves a pass over the images).
    """
    if quantize:
        encoded = torch.round(encoded.clamp(0, 1) * 255) / 255
    storable = bool(quantize)
    if record:
        base = handle.first_layer_response(clean)
        ratio = relative_change(handle.first_layer_response(encoded), base).float()
    else:
        ratio = torch.full((clean.shape[0],), float("nan"), device=clean.device)
    err = mse(encoded, clean) if noise_norm is None else noise_norm.double() ** 2 / clean[0].numel()
    achieved = psnr_from_mse(err).float()
    return EncodeResult(encoded, achieved, ratio, {**info, "storable": storable})


class Encoder(Parametrised, ABC):
    """An encoder recodes pixel-space images for one designated model. Subclasses set ``name``, declare parameters
    as annotated class attributes with defaults (``psnr: PSNR = 30.0``), check rules that involve several
    parameters or the model in ``__init__`` (after ``super().__init__``) and implement ``encode``. Defining a
    subclass with a ``name`` registers it, unless it says ``register=False``."""

    name: ClassVar[str]
    #: The data it recodes: ``image`` (pixels) or ``text`` (packed soft tokens, ``nte_eval.data.tokens``).
    modalities: ClassVar[tuple[str, ...]] = ("image",)

    _init_args = ("handle",)

    def __init_subclass__(cls, register: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if register and "name" in cls.__dict__:
            ENCODERS.register(cls)

    def __init__(self, handle: ModelHandle, **params: Any):
        self.set_params(f"encoder {self.name!r}", params)
        self.handle = handle

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Name, data, parameters (type, default) and the docstring's first line (``nte-eval list``)."""
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        return {"name": cls.name, "modalities": list(cls.modalities), "params": cls.declared(), "description": doc}

    def fit(self) -> Encoder:
        """Compute and cache whatever the encoder needs (e.g. the subspace); returns self."""
        return self

    @abstractmethod
    def encode(self, x: torch.Tensor, key: int | str, index: torch.Tensor | list[int] | None = None,
               labels: torch.Tensor | None = None, record: bool = True) -> EncodeResult:
        """Encode images ``x`` in [0, 1]; ``index`` (dataset positions) with ``key`` fixes each sample's noise.

        ``record=False`` skips measuring the first-layer response ratio (NaN in the result), for throughput.
        """

    def public_settings(self) -> dict[str, Any]:
        """What a method-knowledge attacker knows (Kerckhoffs): the encoder, its settings and the designated
        architecture's first-layer geometry and normalisation; never the key or the weights."""
        h = self.handle
        geometry = {k: v for k, v in h.first.geometry().items() if k != "layer"}
        return {"type": self.name, "params": self.params(), "view": None, "first_layer": geometry,
                "mean": h.mean.flatten().tolist(), "std": h.std.flatten().tolist(), "input_size": list(h.input_size)}

    @staticmethod
    def indices(x: torch.Tensor, index: torch.Tensor | list[int] | None) -> list[int]:
        idx = list(range(x.shape[0])) if index is None else [int(i) for i in index]
        if len(idx) != x.shape[0]:
            raise NTEError(f"encode: {len(idx)} indices for {x.shape[0]} images.")
        return idx
