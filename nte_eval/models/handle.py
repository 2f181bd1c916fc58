"""Pixel-space model handles: a classifier plus its first linear operator and its normalisation.

Every handle takes images in [0, 1]; mean/std live here, never in the caller. The first linear operator A acts on
normalised input, so in pixel space it is the affine map x -> W((x - mean) / std) + b, whose linear part is W D^-1.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nte_eval.errors import NTEError, did_you_mean
from nte_eval.geometry.layer import FirstLayer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelHandle:
    """A classifier taking pixel-space input, with its first linear operator, mean/std, input size and classes."""

    modality = "image"  # what it reads (a text model's handle, ``nte_eval.models.hf.text.TextHandle``, says "text")

    def __init__(self, module: nn.Module, first_layer: str, mean: tuple[float, ...], std: tuple[float, ...],
                 input_size: tuple[int, int, int], class_names: list[str] | None = None, spec: str = "custom",
                 any_size: bool = False):
        self.module = module.eval()
        self.spec = spec
        self.input_size = tuple(int(v) for v in input_size)
        self.any_size = any_size  # the module takes any height and width (global pooling): see ``resize``
        c = self.input_size[0]
        if len(mean) != c or len(std) != c:
            raise NTEError(f"{spec}: mean/std need {c} values (one per input channel), got {len(mean)}/{len(std)}.")
        if any(s <= 0 for s in std):
            raise NTEError(f"{spec}: std values must be positive, got {list(std)}.")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
        self.first = resolve_first_layer(module, first_layer, self.input_size, spec)
        self.class_names = class_names
        self.num_classes = len(class_names) if class_names else None
        self.memo: dict[Any, Any] = {}  # quantities derived from the first layer (subspaces), cleared by ``to``
        self.data_config: dict[str, Any] | None = None  # how timm prepares this model's evaluation images, if it does

    @classmethod
    def from_module(cls, module: nn.Module, first_layer: str, mean: tuple[float, ...] = IMAGENET_MEAN,
                    std: tuple[float, ...] = IMAGENET_STD, input_size: tuple[int, int, int] = (3, 224, 224),
                    class_names: list[str] | None = None, spec: str = "custom") -> ModelHandle:
        """Wrap any ``nn.Module`` whose first linear operator is the Conv2d/Linear at ``first_layer``."""
        return cls(module, first_layer, mean, std, input_size, class_names, spec)

    @property
    def device(self) -> torch.device:
        return self.first.weight.device

    def to(self, device: str | torch.device) -> ModelHandle:
        self.module.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        self.first = resolve_first_layer(self.module, self.first.path, self.input_size, self.spec)
        self.memo.clear()
        return self

    def replica(self) -> ModelHandle:
        """A copy with its own module (a deep copy) and first layer: a model attack adapts it, this one stays."""
        twin = copy.copy(self)
        twin.module = copy.deepcopy(self.module)
        twin.first = resolve_first_layer(twin.module, self.first.path, self.input_size, self.spec)
        twin.memo = {}
        return twin

    def resize(self, height: int, width: int) -> ModelHandle:
        """Take images of ``height`` x ``width`` from now on (a model that takes any size follows the data); one
        forward pass checks that it runs at that size, so a size it cannot take is an error, never a silent one."""
        if not self.any_size:
            raise NTEError(f"{self.spec}: takes only {_size(self.input_size)} images, not {height}x{width}.")
        return self.rebuild_at(height, width, "it follows the data's size", "set data.size to a size it takes")

    def rebuild_at(self, height: int, width: int, why: str = "input_size asks for it",
                   fix: str = "drop input_size (it takes only the size it was built for)") -> ModelHandle:
        """Take ``height`` x ``width`` images (a spec's ``input_size`` for a model built at another size): the first
        layer re-read there, and one forward pass that must succeed."""
        built = _size(self.input_size)
        self.input_size = (self.input_size[0], height, width)
        self.first = resolve_first_layer(self.module, self.first.path, self.input_size, self.spec)
        self.memo.clear()
        check_runs(self, f"{why} (it was built for {built}): {fix}")
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)

    def check_input(self, x: torch.Tensor) -> None:
        """Shape and finiteness check for model input (NTEs may leave [0, 1], so the range is not checked)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_size:
            raise NTEError(f"{self.spec}: expects input (N, {', '.join(map(str, self.input_size))}), "
                           f"got {tuple(x.shape)}; resize the data to the model's input size (data.size).")
        if not torch.isfinite(x.sum()):  # one reduction: NaN/inf propagate through a sum of bounded pixels
            raise NTEError(f"{self.spec}: input contains NaN or infinite pixels.")

    def forward(self, u: torch.Tensor, index: list[int] | None = None) -> torch.Tensor:
        """Logits for normalised input ``u``. ``index``: the samples' positions in the bound data, for models that
        also read per-sample side information (a VLM's question); plain classifiers ignore it."""
        return self.module(u)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, index: list[int] | None = None) -> torch.Tensor:
        """Logits for pixel-space images (no gradient)."""
        self.check_input(x)
        return self.forward(self.normalize(x), index)

    def forward_grad(self, x: torch.Tensor, index: list[int] | None = None) -> torch.Tensor:
        """Logits with autograd enabled, for gradient-based attacks and baselines."""
        return self.forward(self.normalize(x), index)

    @torch.no_grad()
    def first_layer_response(self, x: torch.Tensor) -> torch.Tensor:
        """A(x): the first linear operator applied to normalised pixels (bias included)."""
        f = self.first
        return F.conv2d(self.normalize(x), f.weight, f.bias, f.stride, f.padding)

    @torch.no_grad()
    def first_layer_change(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """A(x) - A(reference) as the layer's linear part on the pixel difference (the mean and the bias cancel):
        one layer pass, without the cancellation error of subtracting two responses."""
        f = self.first
        return F.conv2d((x - reference) / self.std.to(x), f.weight, None, f.stride, f.padding)

    def pixel_operator(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """W D^-1 as an (m, C*kh*kw) matrix: the first layer's linear part acting on raw pixel patches."""
        f = self.first
        inv_std = (1.0 / self.std.flatten().to(f.weight.device, dtype)).repeat_interleave(f.kernel[0] * f.kernel[1])
        return f.weight.to(dtype).reshape(f.out_channels, -1) * inv_std

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "input_size": list(self.input_size), "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist(), **self.first.geometry()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, first_layer={self.first.path!r}, input_size={self.input_size})"


def _size(input_size: tuple[int, ...]) -> str:
    """``(3, 32, 32)`` as ``3x32x32``, for messages."""
    return "x".join(map(str, input_size))


@torch.no_grad()
def check_runs(handle: ModelHandle, advice: str) -> None:
    """Raise NTEError, ending in ``advice``, unless the model runs on one image of its input size: a size it cannot
    take is then an error at loading, not in the middle of a run."""
    x = torch.rand(1, *handle.input_size, generator=torch.Generator().manual_seed(0)).to(handle.device)
    try:
        handle.logits(x)
    except (AssertionError, RuntimeError, ValueError) as e:
        raise NTEError(f"{handle.spec}: does not run on {_size(handle.input_size)} images "
                       f"({str(e).splitlines()[0].rstrip('.')}); {advice}.") from None


def resolve_first_layer(module: nn.Module, path: str, input_size: tuple[int, ...], spec: str) -> FirstLayer:
    """Find the Conv2d/Linear (or ZeroPad2d + Conv2d, or TF-'same' Conv2d) at ``path`` and express it as a
    convolution on (C, H, W)."""
    if not isinstance(path, str):
        raise NTEError(f"{spec}: the first layer is {path!r}, a tuple of parallel branches; nte-eval needs one "
                       "linear operator. Wrap the model and pass first_layer= the path of a single Conv2d/Linear.")
    try:
        layer = module.get_submodule(path)
    except AttributeError:
        names = [n for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        raise NTEError(f"{spec}: no module at first-layer path {path!r}.{did_you_mean(path, names)}") from None
    c, h, w = input_size
    if _is_padded_conv(layer):
        first = _absorb_zero_pad(tuple(layer[0].padding), _conv_layer(layer[1], path, c, spec), spec)
    elif isinstance(layer, nn.Conv2d) and (same := _same_padding(layer, (h, w))) is not None:
        first = _absorb_zero_pad(same, _conv_layer(layer, path, c, spec, probe=False), spec)
    elif isinstance(layer, nn.Conv2d):
        first = _conv_layer(layer, path, c, spec)
    elif isinstance(layer, nn.Linear):
        if layer.in_features != c * h * w:
            raise NTEError(f"{spec}: first layer {path!r} is Linear({layer.in_features}, ...) but the flattened "
                           f"input has {c}*{h}*{w} = {c * h * w} pixels; a Linear first layer must see all pixels.")
        weight = layer.weight.detach().reshape(layer.out_features, c, h, w)
        first = FirstLayer(path, "linear", weight, None if layer.bias is None else layer.bias.detach(), (h, w), (0, 0))
    else:
        raise NTEError(f"{spec}: first layer {path!r} is {type(layer).__name__}, not a linear layer; set "
                       "first_layer to the path of an nn.Conv2d or nn.Linear (or nn.Sequential(nn.ZeroPad2d, "
                       "nn.Conv2d)).")
    if type(layer).forward not in (nn.Conv2d.forward, nn.Linear.forward):
        _check_first_layer(layer, first, input_size, spec)
    return first


def _is_padded_conv(layer: nn.Module) -> bool:
    """An ``nn.Sequential(nn.ZeroPad2d, nn.Conv2d)``: TF-style asymmetric padding in front of an unpadded conv."""
    return (type(layer) is nn.Sequential and len(layer) == 2 and isinstance(layer[0], nn.ZeroPad2d)
            and isinstance(layer[1], nn.Conv2d))


def _same_padding(layer: nn.Conv2d, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The (left, right, top, bottom) zeros a TF-'same' Conv2d pads an image of ``size`` with before convolving with
    its own weight: the ZeroPad2d it holds as ``static_padding`` (efficientnet-lite-pytorch's and
    efficientnet-pytorch's Conv2dStaticSamePadding), or what timm's Conv2dSame pads that size with (``pad_same``).
    None for other layers. ``_check_first_layer`` confirms the result on the layer itself."""
    static = getattr(layer, "static_padding", None)
    if isinstance(static, nn.ZeroPad2d):
        return tuple(static.padding)
    if type(layer).forward is nn.Conv2d.forward:
        return None
    from timm.layers import Conv2dSame
    from timm.layers.padding import pad_same_arg

    if not isinstance(layer, Conv2dSame):
        return None
    return tuple(pad_same_arg(list(size), list(layer.kernel_size), list(layer.stride), list(layer.dilation)))


def _conv_layer(layer: nn.Conv2d, path: str, c: int, spec: str, probe: bool = True) -> FirstLayer:
    """A plain Conv2d with numeric zero padding ('valid' means 0). A subclass's effective weight is read off its
    responses, unless ``probe`` is False: a TF-'same' conv, which convolves with its own ``weight``."""
    if layer.groups != 1 or layer.dilation != (1, 1):
        raise NTEError(f"{spec}: first layer {path!r} uses groups/dilation; only plain Conv2d is supported.")
    padding = (0, 0) if layer.padding == "valid" else layer.padding
    if layer.padding_mode != "zeros" or isinstance(padding, str):
        raise NTEError(f"{spec}: first layer {path!r} must use numeric zero padding.")
    if layer.in_channels != c:
        raise NTEError(f"{spec}: first layer {path!r} takes {layer.in_channels} channels, input_size says {c}.")
    stride, padding = tuple(layer.stride), tuple(padding)
    if type(layer).forward is nn.Conv2d.forward or not probe:
        weight, bias = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    else:  # a subclass (timm StdConv2d, ScaledStdConv2d, ...): its weight is not what it applies
        weight, bias = _probe_conv(layer, c, stride, padding)
    return FirstLayer(path, "conv2d", weight, bias, stride, padding)


def _absorb_zero_pad(pad: tuple[int, int, int, int], conv: FirstLayer, spec: str) -> FirstLayer:
    """Zero padding ``pad`` = (left, right, top, bottom), then ``conv``, as one convolution with symmetric padding.

    Per axis the symmetric padding is the larger side's; the kernel gains zero rows/columns on each side padded less
    (e.g. top 0 / bottom 1, 3x3 stride 2 -> 4x4 with a zero top row, padding 1). Every output window then covers the
    same pixels with the same weights, and the output count is unchanged (H + 2P - k' = H + top + bottom - k).
    """
    left, right, top, bottom = pad
    if min(pad) < 0:
        raise NTEError(f"{spec}: first layer {conv.path!r} crops with ZeroPad2d{pad}; only non-negative padding is "
                       "supported.")
    ph, pw = conv.padding
    top, bottom, left, right = top + ph, bottom + ph, left + pw, right + pw
    py, px = max(top, bottom), max(left, right)
    weight = F.pad(conv.weight, (px - left, px - right, py - top, py - bottom))
    return FirstLayer(conv.path, "conv2d", weight, conv.bias, conv.stride, (py, px))


@torch.no_grad()
def _probe_conv(layer: nn.Conv2d, c: int, stride: tuple[int, int],
                padding: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias a Conv2d subclass effectively applies, read off its responses to one-hot patches.

    Each probe image holds one unit pixel inside a kernel-sized window that output position ``o`` sees exactly
    (given the layer's stride and numeric padding). The result is checked afterwards by ``_check_first_layer``.
    """
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, stride, padding
    oh, ow = -(-ph // sh), -(-pw // sw)  # first output whose window starts inside the image
    ah, aw = oh * sh - ph, ow * sw - pw
    d = c * kh * kw
    ref = layer.weight
    probe = torch.zeros(d + 1, c, ah + kh, aw + kw, device=ref.device, dtype=ref.dtype)
    probe[:d, :, ah:, aw:] = torch.eye(d, device=ref.device, dtype=ref.dtype).reshape(d, c, kh, kw)
    out = layer(probe)[:, :, oh, ow]  # (d + 1, m); the last row answers the zero image
    bias = out[d]
    weight = (out[:d] - bias).T.reshape(-1, c, kh, kw).contiguous()
    return weight, (bias.contiguous() if layer.bias is not None or bias.abs().max() > 0 else None)


@torch.no_grad()
def _check_first_layer(layer: nn.Module, first: FirstLayer, input_size: tuple[int, ...], spec: str) -> None:
    """Raise NTEError unless ``first`` reproduces ``layer`` on a random input of ``input_size``."""
    ref = first.weight
    x = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0)).to(ref.device, ref.dtype)
    got = F.conv2d(x, first.weight, first.bias, first.stride, first.padding)
    want = layer(x.flatten(1) if first.kind == "linear" else x)
    if first.kind == "linear" and isinstance(want, torch.Tensor):
        want = want[:, :, None, None]
    tol = (1e-4 if ref.dtype in (torch.float32, torch.float64) else 2e-2) * (1.0 + float(got.abs().max()))
    if not isinstance(want, torch.Tensor) or want.shape != got.shape or float((got - want).abs().max()) > tol:
        raise NTEError(f"{spec}: first layer {first.path!r} ({type(layer).__name__}) does not act as a fixed "
                       f"convolution with stride {first.stride} and padding {first.padding} at input size "
                       f"{tuple(input_size)} (e.g. TF-style 'same' padding that depends on the input size). Use a "
                       "variant with a plain Conv2d stem, or wrap the model and pass first_layer= a plain Conv2d.")
