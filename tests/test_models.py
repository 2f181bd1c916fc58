"""Model handles: first-layer discovery, pixel-space normalisation, checkpoint loading, input checks.

All timm models are built with random init (no network); sizes are kept small so the file runs in seconds.
"""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from timm.layers import Conv2dSame, ScaledStdConv2d, StdConv2d
from torch import nn

from nte_eval.errors import NTEError
from nte_eval.evaluate.suite import parse_suite
from nte_eval.geometry.conv import PixelConv
from nte_eval.models.checkpoint import load_state_dict
from nte_eval.models.handle import IMAGENET_STD, ModelHandle, resolve_first_layer
from nte_eval.models.load import from_timm, load_model, spec_name

# family -> (timm name, kwargs, input size). All of these have a single-conv str `first_conv` in timm.
TIMM_FAMILIES = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4}, (3, 32, 32)),
    "deit": ("deit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}, (3, 32, 32)),
    "swin": ("swin_tiny_patch4_window7_224", {"img_size": 32, "window_size": 2, "depths": (1, 1, 1, 1)},
             (3, 32, 32)),
    "resnet": ("resnet18", {}, (3, 32, 32)),
    "resnext": ("resnext26ts", {}, (3, 32, 32)),  # deep stem: first_conv is 'stem.conv1.conv'
    "convnext": ("convnext_atto", {}, (3, 32, 32)),
    "efficientnet": ("efficientnet_b0", {}, (3, 32, 32)),
    "mobilenetv3": ("mobilenetv3_small_100", {}, (3, 32, 32)),
    "regnet": ("regnetx_002", {}, (3, 32, 32)),
    "inception_v3": ("inception_v3", {}, (3, 75, 75)),  # needs >= 75 x 75
}


def capture_output(module):
    """Register a hook that stores a copy of ``module``'s output (copy: in-place activations follow some stems)."""
    store = {}
    hook = module.register_forward_hook(lambda m, i, o: store.__setitem__("out", o.detach().clone()))
    return store, hook


def build(family):
    name, kwargs, input_size = TIMM_FAMILIES[family]
    return from_timm(name, kwargs={"num_classes": 10, **kwargs}, input_size=input_size)


@pytest.mark.parametrize("family", list(TIMM_FAMILIES))
def test_timm_first_layer_matches_module_and_pixel_operator(family):
    name, _, input_size = TIMM_FAMILIES[family]
    torch.manual_seed(0)
    handle = build(family)
    cfg = handle.module.pretrained_cfg

    # The path is timm's own first_conv and points at a real Conv2d of this model.
    assert handle.first.path == cfg["first_conv"]
    conv = handle.module.get_submodule(handle.first.path)
    assert isinstance(conv, nn.Conv2d)
    assert handle.first.kind == "conv2d"
    assert handle.first.kernel == tuple(conv.kernel_size)
    assert handle.first.stride == tuple(conv.stride)
    assert handle.first.padding == tuple(conv.padding)
    assert torch.equal(handle.first.weight, conv.weight) and handle.first.weight.shape[1] == 3
    assert handle.input_size == input_size
    assert handle.mean.flatten().tolist() == pytest.approx(list(cfg["mean"]))
    assert handle.std.flatten().tolist() == pytest.approx(list(cfg["std"]))
    assert handle.num_classes == 10 and handle.class_names == [str(i) for i in range(10)]

    # first_layer_response on pixel-space x equals what the model's first conv really sees inside logits().
    x = torch.rand(2, *input_size, generator=torch.Generator().manual_seed(1))
    store, hook = capture_output(conv)
    logits = handle.logits(x)
    hook.remove()
    assert logits.shape == (2, 10)
    response = handle.first_layer_response(x)
    assert response.shape == store["out"].shape
    torch.testing.assert_close(response, store["out"], rtol=1e-4, atol=1e-4)
    # ... and is not what the conv gives on unnormalised pixels (so normalisation really is inside the handle).
    assert not torch.allclose(conv(x).detach(), store["out"], atol=1e-3)

    # W D^-1 acts on raw pixel patches: A(x) - A(mean image) = (W D^-1) unfold(x - mean image).
    op = handle.pixel_operator()
    assert op.dtype == torch.float64
    assert op.shape == (handle.first.out_channels, handle.first.patch_dim)
    mean_img = handle.mean.expand(1, *input_size)
    f = handle.first
    patches = F.unfold((x - mean_img).double(), f.kernel, padding=f.padding, stride=f.stride)  # (N, d, L)
    linear = torch.einsum("md,ndl->nml", op, patches).reshape(response.shape)
    expected = (response - handle.first_layer_response(mean_img)).double()
    torch.testing.assert_close(linear, expected, rtol=1e-4, atol=1e-4)


class StaticSame(nn.Conv2d):
    """efficientnet-lite-pytorch's Conv2dStaticSamePadding in short: a ZeroPad2d fixed at construction, then the
    unpadded convolution with its own weight."""

    def __init__(self, *args, pad=(0, 1, 0, 1), **kwargs):
        super().__init__(*args, **kwargs)
        self.static_padding = nn.ZeroPad2d(pad)

    def forward(self, x):
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, self.padding)


def assert_exact_stem(handle, stem, size):
    """The handle's first layer, on normalised pixels and as PixelConv on pixels (float64), is ``stem`` itself."""
    x = torch.rand(2, *size, generator=torch.Generator().manual_seed(3))
    store, hook = capture_output(stem)
    handle.logits(x)
    hook.remove()
    torch.testing.assert_close(handle.first_layer_response(x), store["out"], rtol=1e-5, atol=1e-5)
    d, stem64 = x.double() - 0.5, copy.deepcopy(stem).double()
    with torch.no_grad():
        want = stem64(d / handle.std.double()) - stem64(torch.zeros_like(d))  # the linear part: no bias
    torch.testing.assert_close(PixelConv(handle).apply(d), want, rtol=1e-12, atol=1e-12)


def test_tf_same_padding_stem_is_the_exact_zero_padded_convolution():
    # timm's Conv2dSame pads asymmetrically, by an amount that depends on the input size: at 32 px 0 above and 1 below
    # (a 4x4 kernel with a zero top row/left column, padding 1); at 33 px 1 and 1 (the 3x3 kernel, padding 1).
    torch.manual_seed(0)
    handle = from_timm("tf_efficientnet_b0", kwargs={"num_classes": 10})
    stem = handle.module.conv_stem
    assert type(stem) is Conv2dSame
    for size, kernel in (((3, 32, 32), (4, 4)), ((3, 33, 33), (3, 3)), ((3, 40, 37), (4, 3))):
        handle.resize(*size[1:])
        assert handle.first.kernel == kernel and handle.first.padding == (1, 1)
        assert_exact_stem(handle, stem, size)


def test_timm_tuple_first_conv_is_an_error():
    # RepVGG's stem is two parallel convolutions: timm's first_conv is a tuple
    assert isinstance(timm.create_model("repvgg_a0", pretrained=False).pretrained_cfg["first_conv"], tuple)
    with pytest.raises(NTEError, match=r"tuple \('stem.conv_kxk.conv', 'stem.conv_1x1.conv'\)"):
        from_timm("repvgg_a0", kwargs={"num_classes": 10})


@pytest.mark.parametrize("conv_cls", [StdConv2d, ScaledStdConv2d])
def test_weight_standardised_first_conv_uses_effective_weight(conv_cls):
    # timm's BiT ResNetV2 / NFNet stems standardise .weight inside forward(); the raw .weight is not the operator.
    torch.manual_seed(0)
    model = nn.Sequential(conv_cls(3, 8, 7, stride=2, padding=3), nn.ReLU(inplace=True), nn.Flatten(),
                          nn.LazyLinear(10))
    model(torch.rand(1, 3, 20, 20))  # materialise the lazy head
    handle = ModelHandle.from_module(model, "0", input_size=(3, 20, 20))
    conv = model[0]
    assert not torch.allclose(handle.first.weight, conv.weight, atol=1e-3)
    x = torch.rand(3, 3, 20, 20)
    store, hook = capture_output(conv)
    handle.logits(x)
    hook.remove()
    torch.testing.assert_close(handle.first_layer_response(x), store["out"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("conv", [Conv2dSame(3, 8, 5, stride=2, bias=True), StaticSame(3, 8, 3, stride=2),
                                  StaticSame(3, 8, 3, stride=2, pad=(2, 0, 1, 3), padding=1)])
def test_same_padding_conv_modules_are_exact(conv):
    for size in ((3, 16, 16), (3, 17, 15)):
        model = nn.Sequential(conv, nn.Flatten())
        assert_exact_stem(ModelHandle.from_module(model, "0", input_size=size), conv, size)


def test_a_same_padding_conv_that_applies_another_weight_is_refused():
    class Doubled(StaticSame):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(NTEError, match=r"'0' \(Doubled\) does not act as a fixed convolution"):
        ModelHandle.from_module(nn.Sequential(Doubled(3, 8, 3, stride=2)), "0", input_size=(3, 16, 16))


def test_timm_first_layer_override_and_errors():
    # the tuple error's advice works: pass first_layer= one of the branches
    handle = from_timm("repvgg_a0", kwargs={"num_classes": 10}, first_layer="stem.conv_kxk.conv",
                       input_size=(3, 32, 32))
    assert handle.first.path == "stem.conv_kxk.conv" and handle.first.kernel == (3, 3)
    with pytest.raises(NTEError, match="'layer1.0.conv1' takes 64 channels, input_size says 3"):
        from_timm("resnet18", kwargs={"num_classes": 10}, first_layer="layer1.0.conv1")
    with pytest.raises(NTEError, match=r"no module at first-layer path 'conv_1'.*Did you mean 'conv1'"):
        from_timm("resnet18", kwargs={"num_classes": 10}, first_layer="conv_1")
    with pytest.raises(NTEError, match="rejected kwargs"):
        from_timm("resnet18", kwargs={"num_classes": 10, "no_such_option": 1})


def test_timm_img_size_and_in_chans_set_input_size():
    handle = from_timm("vit_tiny_patch16_224", kwargs={"num_classes": 10, "img_size": 32, "patch_size": 8,
                                                       "in_chans": 1})
    assert handle.input_size == (1, 32, 32)
    assert handle.mean.numel() == 1 and handle.std.numel() == 1
    assert handle.logits(torch.rand(1, 1, 32, 32)).shape == (1, 10)


def test_a_timm_cnn_takes_any_size_and_a_vit_only_its_own():
    """A CNN with global pooling follows the data's size (checked with a forward pass); a ViT with fixed position
    embeddings, a declared input_size, or a size too small for the network is an error, never a silent mismatch."""
    torch.manual_seed(0)
    cnn = from_timm("resnet18", kwargs={"num_classes": 10})
    assert cnn.any_size and cnn.input_size == (3, 224, 224)
    assert cnn.resize(32, 32) is cnn and cnn.input_size == (3, 32, 32)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(cnn.logits(x), cnn.module(cnn.normalize(x)))
    store, hook = capture_output(cnn.module.conv1)
    cnn.logits(x)
    hook.remove()
    torch.testing.assert_close(cnn.first_layer_response(x), store["out"])  # the first layer, re-resolved at 32 px
    vit = from_timm("vit_tiny_patch16_224", kwargs={"num_classes": 10, "img_size": 32, "patch_size": 8})
    assert not vit.any_size and vit.input_size == (3, 32, 32)
    with pytest.raises(NTEError, match="takes only 3x32x32 images, not 64x64"):
        vit.resize(64, 64)
    assert not from_timm("vit_tiny_patch16_224", kwargs={"num_classes": 10}).any_size  # fixed_input_size in timm
    declared = from_timm("resnet18", kwargs={"num_classes": 10}, input_size=(3, 40, 40))
    assert not declared.any_size and declared.input_size == (3, 40, 40)
    with pytest.raises(NTEError, match=r"does not run on 3x32x32 images \(Input height \(32\) doesn't match model "
                                       r"\(224\)\); input_size must be a size it takes.*kwargs: \{img_size: N\}"):
        from_timm("vit_tiny_patch16_224", kwargs={"num_classes": 10}, input_size=(3, 32, 32))
    inception = from_timm("inception_v3", kwargs={"num_classes": 10})
    assert inception.any_size
    with pytest.raises(NTEError, match=r"does not run on 3x32x32 images .*it was built for 3x299x299\): set "
                                       "data.size to a size it takes"):
        inception.resize(32, 32)


# ---------------------------------------------------------------------------------------------- custom modules


class ConvNet(nn.Module):
    def __init__(self, in_channels=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, stride=2, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        return self.head(self.conv1(x))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(3 * 8 * 8, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.flatten(x))))


MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def test_from_module_conv():
    torch.manual_seed(0)
    model = ConvNet()
    handle = ModelHandle.from_module(model, "conv1", mean=MEAN, std=STD, input_size=(3, 16, 16),
                                     class_names=list("abcdefghij"))
    assert handle.first.kind == "conv2d" and handle.first.kernel == (3, 3) and handle.first.stride == (2, 2)
    assert handle.first.padding == (1, 1) and not handle.first.non_overlapping
    assert handle.num_classes == 10
    x = torch.rand(4, 3, 16, 16)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(handle.logits(x), model((x - mean) / std))
    torch.testing.assert_close(handle.first_layer_response(x), model.conv1((x - mean) / std).detach())
    geo = handle.describe()
    assert geo["layer"] == "conv1" and geo["kernel"] == [3, 3] and geo["in_channels"] == 3
    assert geo["mean"] == pytest.approx(list(MEAN))


def test_from_module_linear_first_layer():
    torch.manual_seed(0)
    model = MLP()
    handle = ModelHandle.from_module(model, "fc1", mean=MEAN, std=STD, input_size=(3, 8, 8))
    f = handle.first
    assert f.kind == "linear" and f.kernel == (8, 8) and f.stride == (8, 8) and f.padding == (0, 0)
    assert f.non_overlapping and f.patch_dim == 3 * 8 * 8 and f.out_channels == 16
    x = torch.rand(5, 3, 8, 8)
    store, hook = capture_output(model.fc1)
    handle.logits(x)
    hook.remove()
    response = handle.first_layer_response(x)
    assert response.shape == (5, 16, 1, 1)
    torch.testing.assert_close(response[:, :, 0, 0], store["out"])
    # one patch = the whole image: A(x) - A(mean) = (W D^-1) (x - mean).flatten()
    mean_img = handle.mean.expand(1, 3, 8, 8)
    linear = (x - mean_img).double().flatten(1) @ handle.pixel_operator().T
    torch.testing.assert_close(linear, (response - handle.first_layer_response(mean_img))[:, :, 0, 0].double(),
                               rtol=1e-5, atol=1e-5)


def test_from_module_errors():
    model = ConvNet()
    with pytest.raises(NTEError, match=r"no module at first-layer path 'conv'.*Did you mean 'conv1'"):
        ModelHandle.from_module(model, "conv", input_size=(3, 16, 16))
    with pytest.raises(NTEError, match="takes 3 channels, input_size says 1"):
        ModelHandle.from_module(model, "conv1", mean=(0.5,), std=(0.5,), input_size=(1, 16, 16))
    with pytest.raises(NTEError, match="ReLU, not a linear layer"):
        ModelHandle.from_module(model, "head.0", input_size=(3, 16, 16))
    with pytest.raises(NTEError, match="mean/std need 3 values"):
        ModelHandle.from_module(model, "conv1", mean=(0.5,), std=(0.5,), input_size=(3, 16, 16))
    with pytest.raises(NTEError, match="std values must be positive"):
        ModelHandle.from_module(model, "conv1", mean=MEAN, std=(0.2, 0.0, 0.3), input_size=(3, 16, 16))
    with pytest.raises(NTEError, match="must see all pixels"):
        ModelHandle.from_module(MLP(), "fc1", input_size=(3, 16, 16))
    grouped = nn.Sequential(nn.Conv2d(3, 6, 3, groups=3))
    with pytest.raises(NTEError, match="groups/dilation"):
        ModelHandle.from_module(grouped, "0", input_size=(3, 16, 16))
    same = nn.Sequential(nn.Conv2d(3, 6, 3, padding="same"))
    with pytest.raises(NTEError, match="numeric zero padding"):
        ModelHandle.from_module(same, "0", input_size=(3, 16, 16))
    with pytest.raises(NTEError, match="tuple"):
        resolve_first_layer(model, ("conv1", "head.3"), (3, 16, 16), "custom")


def test_tuple_first_conv_in_pretrained_cfg(monkeypatch):
    real_create = timm.create_model

    def create_with_tuple(name, **kwargs):
        model = real_create(name, **kwargs)
        model.pretrained_cfg = {**model.pretrained_cfg, "first_conv": ("conv1", "layer1.0.conv1")}
        return model

    monkeypatch.setattr(timm, "create_model", create_with_tuple)
    with pytest.raises(NTEError, match=r"tuple \('conv1', 'layer1.0.conv1'\)"):
        from_timm("resnet18", kwargs={"num_classes": 10})


# ------------------------------------------------------------------------------------------------- load_model


def resnet18_state(num_classes, seed):
    torch.manual_seed(seed)
    return timm.create_model("resnet18", pretrained=False, num_classes=num_classes).state_dict()


@pytest.fixture(scope="module")
def resnet18_1000():
    return resnet18_state(1000, seed=123)


def assert_weights_equal(module, state):
    loaded = module.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_load_model_safetensors_and_pth(tmp_path, resnet18_1000):
    st = tmp_path / "ckpt.safetensors"
    save_file({k: v.contiguous() for k, v in resnet18_1000.items()}, str(st))
    handle = load_model(f"timm:resnet18@{st}")
    assert_weights_equal(handle.module, resnet18_1000)
    assert handle.spec == f"timm:resnet18@{st}" and handle.num_classes == 1000
    assert torch.equal(handle.first.weight, resnet18_1000["conv1.weight"])

    # .pth, wrapped the way training scripts save it, with DataParallel's "module." prefix
    pth = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet18_1000.items()}, "epoch": 3}, pth)
    assert_weights_equal(load_model(f"timm:resnet18@{pth}").module, resnet18_1000)


def test_load_model_wrong_num_classes(tmp_path):
    pth = tmp_path / "ten.pth"
    torch.save(resnet18_state(10, seed=0), pth)
    with pytest.raises(NTEError, match=r"does not fit the architecture \(size mismatch for fc.weight"):
        load_model(f"timm:resnet18@{pth}")  # default num_classes=1000
    # the same file fits when the mapping says num_classes: 10
    handle = load_model({"timm": "resnet18", "checkpoint": str(pth), "kwargs": {"num_classes": 10}})
    assert handle.num_classes == 10


class NotATensor:
    def __init__(self):
        self.payload = [1, 2, 3]


def test_unsafe_and_bad_checkpoints(tmp_path):
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": NotATensor()}, unsafe)
    with pytest.raises(NTEError, match="not safe to load with weights_only=True"):
        load_model(f"timm:resnet18@{unsafe}")

    with pytest.raises(NTEError, match="does not exist"):
        load_model(f"timm:resnet18@{tmp_path / 'missing.safetensors'}")

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(NTEError, match="not a valid safetensors file"):
        load_state_dict(broken)

    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(NTEError, match="does not hold a state dict"):
        load_state_dict(tensor_only)


def test_load_model_name_errors():
    with pytest.raises(NTEError, match=r"unknown timm model 'resnet181'.*Did you mean.*'resnet18'"):
        load_model("timm:resnet181")
    with pytest.raises(NTEError, match=r"unknown scheme 'tim'.*Did you mean 'timm'"):
        load_model("tim:resnet18")
    with pytest.raises(NTEError, match="must be 'zoo:NAME'"):
        load_model("resnet18")


def test_load_model_mapping(tmp_path):
    state = resnet18_state(10, seed=7)
    ckpt = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt))
    mean, std = [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]
    handle = load_model({"timm": "resnet18", "kwargs": {"num_classes": 10}, "mean": mean, "std": std,
                         "checkpoint": str(ckpt), "input_size": [3, 32, 32]})
    assert_weights_equal(handle.module, state)
    assert handle.mean.flatten().tolist() == pytest.approx(mean)
    assert handle.std.flatten().tolist() == pytest.approx(std)
    assert handle.input_size == (3, 32, 32)
    x = torch.rand(2, 3, 32, 32)
    expected = handle.module((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(handle.logits(x), expected)

    with pytest.raises(NTEError, match=r"unknown key 'checkpiont'.*Did you mean 'checkpoint'"):
        load_model({"timm": "resnet18", "checkpiont": str(ckpt)})
    with pytest.raises(NTEError, match="needs a 'timm' key"):
        load_model({"model": "resnet18"})


def test_display_names_are_short_and_depend_on_the_spec_alone():
    """A checkpoint's display name (a results key, a table column) is its architecture and file stem, not its path."""
    assert spec_name("timm:resnet18@/long/path/to/weights.safetensors") == "resnet18@weights"
    assert spec_name({"timm": "resnet18", "checkpoint": "runs/seed0/best.pth", "kwargs": {"num_classes": 10}}) == \
        "resnet18@best"
    assert spec_name({"timm": "resnet18", "checkpoint": "runs/seed0/best.pth", "name": "seed0"}) == "seed0"
    assert spec_name("timm:resnet18") == spec_name({"timm": "resnet18"}) == "timm:resnet18"
    assert spec_name("zoo:vit_null") == spec_name({"zoo": "vit_null"}) == "zoo:vit_null"
    assert spec_name("hf:models/vit") == spec_name({"hf": "models/vit"}) == "hf:models/vit"
    # two checkpoints of one file name: distinct `name:`s tell them apart (without, the suite refuses them)
    suite = parse_suite({"name": "seeds", "designated": "zoo:vit_null", "encoders": [{"type": "nte"}],
                         "models": [{"timm": "resnet18", "checkpoint": f"runs/seed{i}/best.pth", "name": f"seed{i}"}
                                    for i in range(2)]})
    assert [spec_name(s) for s in suite.models] == ["seed0", "seed1"]


# ----------------------------------------------------------------------------------------------- factory specs

R18 = {"factory": "torchvision.models:resnet18", "kwargs": {"num_classes": 10}, "first_layer": "conv1",
       "input_size": [3, 32, 32]}


def test_a_factory_spec_builds_loads_and_wraps_any_module(tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    ckpt = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt))
    spec = {**R18, "checkpoint": str(ckpt), "mean": list(MEAN), "std": list(STD)}
    handle = load_model(spec)
    assert_weights_equal(handle.module, state)
    assert handle.spec == spec_name(spec) == "resnet18@r18" and handle.input_size == (3, 32, 32)
    assert handle.first.path == "conv1" and handle.first.kernel == (7, 7)
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(handle.logits(x), handle.module((x - mean) / std))
    # what ModelHandle.from_module assumes where the spec says nothing: ImageNet mean/std, 3x224x224
    plain = load_model({k: v for k, v in R18.items() if k != "input_size"})
    assert plain.input_size == (3, 224, 224) and plain.std.flatten().tolist() == pytest.approx(IMAGENET_STD)
    assert spec_name(R18) == "torchvision.models:resnet18" and spec_name({**R18, "name": "r"}) == "r"


@pytest.mark.parametrize(("change", "match"), [
    ({"factory": "resnet18"}, "factory: 'resnet18' is not 'package.module:callable'"),
    ({"first_layer": None}, "first_layer: give the path of the model's first Conv2d/Linear"),
    ({"timm": "resnet18"}, "unknown key 'timm'; a factory model takes factory, kwargs"),
    ({"kwargs": [10]}, "kwargs: \\[10\\] is not a mapping of the factory's arguments"),
    ({"factory": "no_such_package_xyz.models:build"}, "cannot import module 'no_such_package_xyz.models' "
                                                      "\\(ModuleNotFoundError: No module named 'no_such_package_xyz'"),
    ({"factory": "torchvision.models:resnet81"}, "torchvision.models has no 'resnet81'. Did you mean 'resnet18'"),
    ({"factory": "math:pi"}, "math:pi': pi is a float, not a callable"),
    ({"kwargs": {"num_clases": 10}}, "'torchvision.models:resnet18' raised TypeError when called with kwargs "
                                     "\\{'num_clases': 10\\}: .*unexpected keyword argument 'num_clases'"),
    ({"factory": "collections:OrderedDict"}, "returned OrderedDict, not a torch.nn.Module"),
    ({"first_layer": "bn1"}, "first layer 'bn1' is BatchNorm2d, not a linear layer"),
    ({"first_layer": "conv_1"}, "no module at first-layer path 'conv_1'.*Did you mean 'conv1'"),
    ({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.5]}, "'conv1' takes 3 channels, input_size says 1"),
])
def test_factory_spec_errors(change, match):
    with pytest.raises(NTEError, match=match):
        load_model({**R18, **change})


def test_a_checkpoint_with_other_keys_says_how_many(tmp_path):
    ckpt = tmp_path / "partial.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7), "head.weight": torch.zeros(10, 512)}, str(ckpt))
    with pytest.raises(NTEError, match=r"resnet18@partial: checkpoint .*partial.safetensors does not fit the "
                                       r"architecture: 101 missing keys \(of the model's 122\), 1 unexpected \(of "
                                       r"the checkpoint's 2\); missing e.g. 'bn1.weight', unexpected e.g. "
                                       r"'head.weight'\."):
        load_model({**R18, "checkpoint": str(ckpt)})


# ------------------------------------------------------------------------------------------------ input checks


def test_logits_input_checks():
    handle = ModelHandle.from_module(ConvNet(), "conv1", input_size=(3, 16, 16))
    assert handle.logits(torch.rand(2, 3, 16, 16)).shape == (2, 10)
    with pytest.raises(NTEError, match=r"expects input \(N, 3, 16, 16\), got \(2, 3, 32, 32\)"):
        handle.logits(torch.rand(2, 3, 32, 32))
    with pytest.raises(NTEError, match="expects input"):
        handle.logits(torch.rand(2, 1, 16, 16))
    with pytest.raises(NTEError, match="expects input"):
        handle.logits(torch.rand(3, 16, 16))
    x = torch.rand(2, 3, 16, 16)
    x[1, 0, 4, 4] = float("nan")
    with pytest.raises(NTEError, match="NaN or infinite"):
        handle.logits(x)
    x[1, 0, 4, 4] = float("inf")
    with pytest.raises(NTEError, match="NaN or infinite"):
        handle.logits(x)
    # NTEs may leave [0, 1]: out-of-range but finite input is accepted
    assert torch.isfinite(handle.logits(torch.rand(1, 3, 16, 16) * 3 - 1)).all()


def test_forward_grad_has_gradients():
    handle = ModelHandle.from_module(ConvNet(), "conv1", input_size=(3, 16, 16))
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    handle.forward_grad(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
