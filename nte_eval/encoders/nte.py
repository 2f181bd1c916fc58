"""The NTE encoder: noise in the designated model's low-sensitivity subspace, scaled to a pixel-space PSNR."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field

from nte_eval.encoders.base import PSNR, Encoder, EncodeResult, box_scale, check_box, dykstra, finish, keyed_normal
from nte_eval.errors import NTEError
from nte_eval.geometry.subspace import (
    DEFAULT_SELECT,
    OperatorSubspace,
    PatchSubspace,
    Select,
    cached_subspace,
    natural_view,
)
from nte_eval.metrics import mse, noise_norm_for_psnr
from nte_eval.models.handle import ModelHandle


def normal_select(spec: str) -> str:
    """A ``select`` spec in the form the results record ('tau=1e-2' -> 'tau=0.01'); a ValueError says what is
    wrong with it (suite validation reports it under the key path)."""
    try:
        return str(Select.parse(spec))
    except NTEError as e:
        raise ValueError(str(e)) from None


class NTEEncoder(Encoder):
    """Non-transferable examples (Wang et al., 2025), built in pixel space.

    ``mode='patch'`` draws noise in the null/low-sensitivity space of the per-patch kernel matrix W D^-1 (exact when
    stride == kernel; on overlapping stems it folds overlapping patches back, which is the reference code's flawed
    approach, kept to show what folding breaks). ``mode='operator'`` uses the whole strided, padded convolution, so
    overlapping stems get exact image-space NTEs. ``auto`` picks patch for non-overlapping layers, else operator.
    ``noise='tiled'`` repeats one patch vector over the image (the reference behaviour, estimable by averaging).
    ``border`` (operator mode): ``correct`` makes the zero-padded border exact with CGLS; ``check`` skips that
    (one FFT pair per image) and leaves the border's extra response to be measured.
    """

    name = "nte"
    mode: Literal["auto", "patch", "operator"] = "auto"
    select: Annotated[str, AfterValidator(normal_select)] = DEFAULT_SELECT
    psnr: PSNR = 30.0
    noise: Literal["per_patch", "tiled"] = "per_patch"
    box: Literal["none", "clip", "project"] = "none"
    quantize: bool = False
    border: Literal["correct", "check"] = "correct"
    project_iters: Annotated[int, Field(ge=0)] = 100

    def __init__(self, handle: ModelHandle, **params: Any):
        """Validate the settings for ``handle``; afterwards ``mode`` is the view in use (``auto`` resolved) and
        ``select`` a ``Select``, while ``params()`` records them as given."""
        super().__init__(handle, **params)
        check_box(self.box, self.quantize)
        first = handle.first
        if self.mode == "auto":
            self.mode = natural_view(first)
        if self.mode == "operator" and self.noise == "tiled":
            raise NTEError("noise='tiled' repeats one patch vector and exists only in mode='patch'.")
        if self.box == "project" and self.mode == "patch" and not first.non_overlapping:
            raise NTEError("box='project' needs an exact subspace projector; for an overlapping first layer use "
                           "mode='operator' (or 'auto').")
        self.select = Select.parse(self.select)
        self._check_k()
        self.subspace: PatchSubspace | OperatorSubspace | None = None

    def _check_k(self) -> None:
        """``select: k=N`` counts directions per patch (patch view) or per polyphase block (operator view): N above
        that dimension is an error here, before any work, rather than silently all of them."""
        f = self.handle.first
        dim = f.patch_dim if self.mode == "patch" else f.weight.shape[1] * f.stride[0] * f.stride[1]
        if self.select.kind == "k" and self.select.value > dim:
            unit = "patch" if self.mode == "patch" else "polyphase block"
            raise NTEError(f"nte: select k={int(self.select.value)} asks for more directions than exist: "
                           f"{self.handle.spec}'s first layer in the {self.mode} view has {dim} per {unit}; choose "
                           f"k <= {dim} (or select by tau= or energy=).")

    def public_settings(self) -> dict[str, Any]:
        return {**super().public_settings(), "view": self.mode}

    def fit(self) -> NTEEncoder:
        if self.subspace is None:
            self.subspace = cached_subspace(self.handle, self.mode, self.select)
            if self.mode == "patch":
                self._basis = self.subspace.basis64.float()
                self._complement = self.subspace.complement64.float()
        return self

    # ---------------------------------------------------------------------------------- patch view helpers
    @property
    def _tiles_image(self) -> bool:
        """Non-overlapping patches that tile the whole image: patches <-> image is a pure reshape."""
        f, (_, h, w) = self.handle.first, self.handle.input_size
        return f.non_overlapping and h % f.kernel[0] == 0 and w % f.kernel[1] == 0

    def _to_patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, d) patches in the kernel's (C, kh, kw) order."""
        f = self.handle.first
        if self._tiles_image:
            b, c, h, w = x.shape
            (kh, kw) = f.kernel
            p = x.reshape(b, c, h // kh, kh, w // kw, kw).permute(0, 2, 4, 1, 3, 5)
            return p.reshape(b, (h // kh) * (w // kw), c * kh * kw)
        return F.unfold(x, f.kernel, stride=f.stride, padding=f.padding).transpose(1, 2)

    def _from_patches(self, p: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> image; overlapping patches are summed (fold), as the reference code does."""
        f = self.handle.first
        c, h, w = self.handle.input_size
        if self._tiles_image:
            (kh, kw), b = f.kernel, p.shape[0]
            return p.reshape(b, h // kh, w // kw, c, kh, kw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        return F.fold(p.transpose(1, 2), (h, w), f.kernel, stride=f.stride, padding=f.padding)

    def project(self, d: torch.Tensor) -> torch.Tensor:
        """Project image-space perturbations onto the selected subspace (exact unless patch mode folds)."""
        self.fit()
        if self.mode == "operator":
            return self.subspace.project(d, self.border)
        patches = self._to_patches(d)
        if self._basis.shape[1] <= self._complement.shape[1]:
            basis = self._basis.to(d)
            return self._from_patches(patches @ basis @ basis.T)
        rest = self._complement.to(d)  # a large subspace (a Linear's null space): remove the small complement
        return self._from_patches(patches - patches @ rest @ rest.T)

    def draw(self, x: torch.Tensor, key: int | str, idx: list[int]) -> torch.Tensor:
        """Unscaled noise in the subspace, fixed by (key, index) per sample.

        Image-shaped (B, C, H, W), except for non-overlapping patches tiling the image: then a strided view
        (B, C, gh, kh, gw, kw) of the patch-major noise, which ``x.view`` matches without copying either.
        """
        self.fit()
        if self.mode == "operator":
            z = keyed_normal(self.subspace.coefficient_shape, key, idx, x.device, x.dtype)
            return self.subspace.sample(z, self.border)
        basis = self._basis.to(x)
        n_patches = self._to_patches(x[:1]).shape[1]
        rows = 1 if self.noise == "tiled" else n_patches
        z = keyed_normal((rows, basis.shape[1]), key, idx, x.device, x.dtype)
        patches = z.expand(-1, n_patches, -1) @ basis.T  # (B, L, d)
        if self._tiles_image:
            (kh, kw), (c, h, w), b = self.handle.first.kernel, self.handle.input_size, x.shape[0]
            return patches.view(b, h // kh, w // kw, c, kh, kw).permute(0, 3, 1, 4, 2, 5)
        return self._from_patches(patches)

    def encode(self, x: torch.Tensor, key: int | str, index: torch.Tensor | list[int] | None = None,
               labels: torch.Tensor | None = None, record: bool = True) -> EncodeResult:
        idx = self.indices(x, index)
        self.handle.check_input(x)
        if tuple(x.shape[1:]) != self.handle.input_size:  # a VLM handle accepts any size; its NTEs need its own
            raise NTEError(f"nte: {self.handle.spec} takes {self.handle.input_size} images, got "
                           f"{tuple(x.shape[1:])}; resize the data to the designated model's input size.")
        delta = self.draw(x, key, idx)
        dims = tuple(range(1, delta.dim()))
        norms = torch.linalg.vector_norm(delta, dim=dims)
        factor = (noise_norm_for_psnr(self.psnr, x[0].numel()) / norms.clamp_min(1e-30))
        factor = factor.view(-1, *([1] * len(dims)))
        added = None
        if self.box == "project":
            out = self._project_box(x, (delta * factor).reshape(x.shape))
        else:  # one pass: x + scaled noise, written in x's layout
            out = torch.addcmul(x.contiguous().view(delta.shape), delta, factor).reshape(x.shape)
            added = norms * factor.flatten()  # the noise actually added, before any clipping
            if self.box == "clip":
                out, added = out.clamp_(0, 1), None
        info = {"mode": self.mode, **self.subspace.describe()}
        return finish(x, out, self.handle, self.quantize, info, record, None if self.quantize else added)

    def _project_box(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """A point of (x + subspace) inside [0, 1] near x + delta: up to 3 rescaled tries toward the target PSNR,
        keeping per sample the one with the most noise that does not exceed the target.

        Dykstra's projections (onto the subspace offset and the box) approach the nearest point of the intersection.
        Operator mode iterates with the circular-view projector and corrects the border once at the end. The last
        iterate on the subspace is then shrunk toward x (per patch in patch mode, per image in operator mode) until
        it lies exactly in the box, so the result stays exactly in the subspace.
        """
        target = noise_norm_for_psnr(self.psnr, x[0].numel()) ** 2 / x[0].numel()
        scale = torch.ones(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype)
        operator = self.mode == "operator"
        project = self.subspace.project_circular if operator else self.project
        best, best_err = x.clone(), torch.zeros_like(scale)  # x itself: zero noise, trivially in both sets
        for _ in range(3):
            d = dykstra(x + scale * delta, lambda y: x + project(y - x), self.project_iters) - x
            if operator and self.border == "correct":
                d = self.subspace.correct_border(d)
            t = box_scale(x, d)
            if operator:
                t = t.flatten(1).amin(1).view_as(scale)
            else:
                patches = self._to_patches(t)
                t = self._from_patches(patches.amin(-1, keepdim=True).expand_as(patches))
            out = (x + t * d).clamp(0, 1)
            got = mse(out, x).to(x.dtype).clamp_min(1e-30).view_as(scale)
            better = (got <= 1.05 * target) & (got > best_err)  # more noise, but not beyond the target
            best, best_err = torch.where(better, out, best), torch.where(better, got, best_err)
            if torch.allclose(got, torch.full_like(got, target), rtol=0.02):
                break
            scale = scale * (target / got).sqrt().clamp(max=4.0)
        return best
