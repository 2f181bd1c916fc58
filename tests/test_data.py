"""Bundled data (coloured sklearn digits, skimage photos), user image folders and the pixel-space checks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits as sk_digits

from nte_eval.data.images import check_images, load_digits, load_imagefolder, load_photos, read_image
from nte_eval.data.sources import load_pixels
from nte_eval.errors import NTEError

LUMA = torch.tensor([0.299, 0.587, 0.114])


@pytest.fixture(scope="module")
def digits():
    return {"train": load_digits("train"), "test": load_digits("test")}


def sk_index(imageset):
    return torch.tensor([int(name.removeprefix("digits-")) for name in imageset.names])


def test_digits_split_sizes_shapes_and_labels(digits):
    train, test = digits["train"], digits["test"]
    assert len(train) == 1437 and len(test) == 360
    for part in (train, test):
        assert part.images.shape == (len(part), 3, 32, 32) and part.images.dtype == torch.float32
        assert part.labels.shape == (len(part),) and part.labels.dtype == torch.long
        assert part.images.min() >= 0 and part.images.max() <= 1
        assert part.class_names == [str(d) for d in range(10)]
        check_images(part.images, channels=3)
    # every class in test, stratified: 35-37 per class (0.2 * ~180)
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    # disjoint, together all 1,797 sklearn digits, and the labels are sklearn's
    tr, te = set(sk_index(train).tolist()), set(sk_index(test).tolist())
    assert not tr & te and len(tr | te) == 1797
    raw = sk_digits()
    for part in (train, test):
        assert torch.equal(part.labels, torch.from_numpy(raw.target)[sk_index(part)].long())


def test_digits_deterministic(digits):
    again = load_digits("test")
    assert torch.equal(again.images, digits["test"].images)
    assert torch.equal(again.labels, digits["test"].labels)
    assert again.names == digits["test"].names
    head = load_digits("train", limit=7, size=16)
    assert head.images.shape == (7, 3, 16, 16)
    assert head.names == digits["train"].names[:7]
    assert len(load_digits("all")) == 1797


def test_digits_are_coloured_and_legible(digits):
    test = digits["test"]
    x = test.images.flatten(2)  # (N, 3, P)
    # the channels differ: R != G in every image, and the colouring is not a grey image repeated
    assert (x[:, 0] - x[:, 1]).abs().mean(1).min() > 0.01
    centred = x - x.mean(2, keepdim=True)
    unit = centred / centred.norm(dim=2, keepdim=True)
    corr = torch.einsum("ncp,ndp->ncd", unit, unit)  # per-image channel correlation
    off_diag = corr[:, [0, 0, 1], [1, 2, 2]]
    assert (off_diag.min(1).values < 0.9).float().mean() > 0.3  # many images have anti-correlated channels
    # the colour of the ink varies between images: pooled over the set, the channels are far from collinear
    pooled = torch.corrcoef(test.images.permute(1, 0, 2, 3).flatten(1))
    assert pooled[0, 1] < 0.9 and pooled[0, 2] < 0.9 and pooled[1, 2] < 0.9

    # legible: the image luminance traces the digit's shape (ink and paper colours are gradients, so the
    # background gradient also varies the luminance, but the digit dominates)
    raw = torch.from_numpy(sk_digits().images / 16.0).float()[sk_index(test)][:, None]
    grey = F.interpolate(raw, size=(32, 32), mode="bilinear", align_corners=False)[:, 0].flatten(1)
    lum = torch.einsum("ncp,c->np", x, LUMA)
    lum_c, grey_c = lum - lum.mean(1, keepdim=True), grey - grey.mean(1, keepdim=True)
    shape_corr = (lum_c * grey_c).sum(1) / (lum_c.norm(dim=1) * grey_c.norm(dim=1))
    assert shape_corr.abs().median() > 0.8 and shape_corr.abs().min() > 0.3
    # within one image the colours do not lie on one colour line (no single-line projection shortcut)
    sv = torch.linalg.svdvals(centred)  # (N, 3)
    assert (sv[:, 1] / sv[:, 0]).median() > 0.1


def test_digits_bad_arguments():
    with pytest.raises(NTEError, match="unknown split 'val'"):
        load_digits("val")
    with pytest.raises(NTEError, match="limit must be a positive integer"):
        load_digits("test", limit=0)


def test_photos():
    photos = load_photos(size=64)
    assert photos.images.shape == (5, 3, 64, 64)
    assert photos.names == ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"]
    assert torch.equal(photos.labels, torch.full((5,), -1))
    check_images(photos.images, channels=3)
    assert (photos.images.flatten(1).std(1) > 0.05).all()  # real content, not blank
    assert ((photos.images[:, 0] - photos.images[:, 2]).abs().mean((1, 2)) > 0.01).all()  # colour photos
    two = load_pixels("photos", size=32, limit=2)
    assert two.images.shape == (2, 3, 32, 32) and two.names == ["astronaut", "chelsea"]


def test_imageset_subset(digits):
    test = digits["test"]
    sub = test.subset([3, 1])
    assert torch.equal(sub.images, test.images[[3, 1]]) and sub.names == [test.names[3], test.names[1]]
    assert len(test.subset(slice(0, 10, 2))) == 5


# ------------------------------------------------------------------------------------------------- imagefolder


def save(path, array, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def solid(h, w, rgb):
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (h, w, 3)).copy()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    # class names sort as bird < cat < dog; sizes differ; PNG and JPEG mixed
    save(root / "dog" / "a.png", solid(40, 30, (200, 10, 10)))
    save(root / "dog" / "b.jpg", solid(25, 60, (10, 200, 10)))
    save(root / "dog" / "c.png", solid(64, 64, (10, 10, 200)))
    save(root / "cat" / "a.jpeg", solid(50, 20, (120, 120, 120)))
    save(root / "bird" / "a.png", solid(16, 16, (255, 255, 255)))
    save(root / "bird" / "b.png", solid(100, 80, (0, 0, 0)))
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_labels_sizes_and_round_robin(folder):
    data = load_imagefolder(folder, size=24)
    assert data.class_names == ["bird", "cat", "dog"]
    assert data.images.shape == (6, 3, 24, 24)
    check_images(data.images[:], channels=3)
    # round robin: first image of each class, then the second of each, ...
    assert data.names == ["bird/a.png", "cat/a.jpeg", "dog/a.png", "bird/b.png", "dog/b.jpg", "dog/c.png"]
    assert data.labels.tolist() == [0, 1, 2, 0, 2, 2]
    # colours survive reading, resizing and (for PNG) exactly
    torch.testing.assert_close(data.images[2].mean((1, 2)), torch.tensor([200, 10, 10]) / 255.0)
    assert torch.allclose(data.images[0], torch.ones(3, 24, 24)) and data.images[3].max() == 0
    assert torch.allclose(data.images[1], torch.full((3, 24, 24), 120 / 255), atol=3 / 255)  # JPEG

    limited = load_imagefolder(folder, size=24, limit=3)
    assert limited.labels.tolist() == [0, 1, 2]  # every class kept
    assert limited.names == data.names[:3]
    grey = load_pixels("imagefolder", root=str(folder), size=8, channels=1)
    assert grey.images.shape == (6, 1, 8, 8)


def test_imagefolder_resize_and_centre_crop(tmp_path):
    # 20 x 60 image: blue | red | green thirds. Shorter side -> 16 gives 16 x 48; the centre crop is the red third.
    img = np.concatenate([solid(20, 20, (0, 0, 255)), solid(20, 20, (255, 0, 0)), solid(20, 20, (0, 255, 0))], 1)
    save(tmp_path / "wide" / "x.png", img)
    tall = np.transpose(img, (1, 0, 2)).copy()  # 60 x 20: the same along the height
    save(tmp_path / "wide" / "y.png", tall)
    data = load_imagefolder(tmp_path, size=16)
    assert data.images.shape == (2, 3, 16, 16)
    for image in data.images:
        inner = image[:, 2:-2, 2:-2]  # away from the antialiased seams
        torch.testing.assert_close(inner, torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand_as(inner),
                                   atol=1e-3, rtol=0)


def test_imagefolder_numeric_class_names(tmp_path):
    for name in ("0", "2", "10"):
        save(tmp_path / name / "img.png", solid(8, 8, (int(name) * 20, 0, 0)))
    data = load_imagefolder(tmp_path, size=8)
    assert sorted(data.labels.tolist()) == [0, 2, 10]
    for label, name in zip(data.labels.tolist(), data.names, strict=True):
        assert name.split("/")[0] == str(label)  # the label is the folder's value, not its rank
    assert data.class_names == [str(i) for i in range(11)]


def test_sixteen_bit_png_keeps_its_range(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)
    img = read_image(path, channels=3)
    assert img.shape == (3, 32, 32)
    torch.testing.assert_close(img[1], torch.from_numpy(ramp / 65535.0).float())
    assert torch.equal(img[0], img[2])


def test_imagefolder_errors(tmp_path):
    with pytest.raises(NTEError, match="is not a folder"):
        load_imagefolder(tmp_path / "missing", size=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NTEError, match="no images"):
        load_imagefolder(empty, size=8)
    flat = tmp_path / "flat"  # images directly in the folder: unlabelled, evaluated label-free
    save(flat / "a.png", solid(8, 8, (1, 2, 3)))
    save(flat / "b.png", solid(8, 8, (4, 5, 6)))
    loose = load_imagefolder(flat, size=8)
    assert loose.label_free and loose.names == ["a.png", "b.png"] and loose.images[1].shape == (3, 8, 8)
    save(flat / "cat" / "c.png", solid(8, 8, (7, 8, 9)))  # ... beside a class folder: refused, naming both
    with pytest.raises(NTEError, match=r"mixes 2 image\(s\) directly in it \(no label, e.g. a.png\) with class "
                                       r"subfolders \(cat\)"):
        load_imagefolder(flat, size=8)
    (empty / "cls").mkdir()
    (empty / "cls" / "readme.txt").write_text("hi")
    with pytest.raises(NTEError, match="no images"):
        load_imagefolder(empty, size=8)

    corrupt = tmp_path / "corrupt"
    save(corrupt / "ok" / "a.png", solid(8, 8, (1, 2, 3)))
    bad = corrupt / "ok" / "x.png"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    lazy = load_imagefolder(corrupt, size=8)  # files are read when indexed: a corrupt one is named then
    assert lazy.images[0].shape == (3, 8, 8)
    with pytest.raises(NTEError, match=r"cannot read image .*x\.png"):
        lazy.images[:]
    with pytest.raises(NTEError, match="limit must be a positive integer"):
        load_imagefolder(tmp_path / "flat", size=8, limit=0)

    with pytest.raises(NTEError, match="data.root is required"):
        load_pixels("imagefolder", size=8)
    with pytest.raises(NTEError, match="data.size is required"):
        load_pixels("imagefolder", root=str(corrupt))
    with pytest.raises(NTEError, match="unknown data source 'cifar'"):
        load_pixels("cifar")


def test_check_images():
    good = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    check_images(good, channels=3)
    check_images(torch.zeros(1, 1, 4, 4))  # boundaries are allowed
    check_images(torch.ones(1, 1, 4, 4))
    nan = good.clone()
    nan[1, 2, 3, 3] = float("nan")
    with pytest.raises(NTEError, match="1 image"):
        check_images(nan)
    low = good.clone()
    low[0, 1, 2, 3] = -0.5
    with pytest.raises(NTEError, match=r"found range \[-0.5, "):
        check_images(low)
    with pytest.raises(NTEError, match="must lie in"):
        check_images(good * 255)
    with pytest.raises(NTEError, match="the model takes 1 channels, the images have 3"):
        check_images(good, channels=1)
    with pytest.raises(NTEError, match=r"expected a \(N, C, H, W\) tensor, got \(3, 8, 8\)"):
        check_images(good[0])
    with pytest.raises(NTEError, match="got ndarray"):
        check_images(good.numpy())
    with pytest.raises(NTEError, match="divide 8-bit images by 255"):
        check_images((good * 255).to(torch.uint8))

