"""Real photos that ship inside installed packages, for label-free runs on real images without a download: 20
photos from scikit-image, scikit-learn and matplotlib, and scikit-image's 200 faces from LFW (25 x 25 greyscale,
upsampled). No labels: every model is scored by agreement with its own clean prediction. Split ``test``: the photos
and the first 100 faces; ``train`` (the attackers' public images): the other 100 faces; ``all``: everything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nte_eval.data.images import ImageSet, check_limit, read_image, resize_crop

# (package, file in its data folder): colour photos first, then greyscale ones (read as three equal channels)
PHOTO_FILES = (
    ("skimage", "astronaut.png"), ("skimage", "chelsea.png"), ("skimage", "coffee.png"), ("skimage", "rocket.jpg"),
    ("skimage", "hubble_deep_field.jpg"), ("skimage", "ihc.png"), ("skimage", "retina.jpg"),
    ("skimage", "motorcycle_left.png"), ("sklearn", "china.jpg"), ("sklearn", "flower.jpg"),
    ("matplotlib", "grace_hopper.jpg"), ("skimage", "camera.png"), ("skimage", "coins.png"), ("skimage", "moon.png"),
    ("skimage", "brick.png"), ("skimage", "grass.png"), ("skimage", "gravel.png"), ("skimage", "clock_motion.png"),
    ("skimage", "cell.png"), ("skimage", "text.png"),
)
FACES = 200  # scikit-image's lfw_subset
TEST_FACES = 100  # the first faces are evaluated (split test), the others public (split train)


def package_folder(package: str) -> Path:
    """The folder in which ``package`` keeps its sample images."""
    if package == "skimage":
        import skimage

        return Path(skimage.__file__).parent / "data"
    if package == "sklearn":
        import sklearn

        return Path(sklearn.__file__).parent / "datasets" / "images"
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data"


def load_real_photos(split: str = "test", size: int = 224, limit: int | None = None) -> ImageSet:
    """The split's photos (``PHOTO_FILES``, split test and all) and LFW faces, resized (shorter side, bilinear,
    antialiased) and centre-cropped to ``size``; ``limit``: the first images of that order."""
    check_limit(limit, "real_photos")
    files = PHOTO_FILES if split in ("test", "all") else ()
    faces = {"test": range(TEST_FACES), "train": range(TEST_FACES, FACES), "all": range(FACES)}[split]
    keep = len(files) + len(faces) if limit is None else min(limit, len(files) + len(faces))
    images, names = [], []
    for package, name in files[:keep]:
        images.append(resize_crop(read_image(package_folder(package) / name, 3), size))
        names.append(f"{package}/{name}")
    faces = faces[:keep - len(images)]
    if len(faces):
        lfw = torch.from_numpy(np.load(package_folder("skimage") / "lfw_subset.npy")[faces.start:faces.stop]).float()
        big = F.interpolate(lfw[:, None], size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        images += list(big.expand(-1, 3, -1, -1))
        names += [f"skimage/lfw_subset/{i:03d}" for i in faces]
    return ImageSet(torch.stack(images), torch.full((len(images),), -1, dtype=torch.long), [], names)
