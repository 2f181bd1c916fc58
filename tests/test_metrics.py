"""Per-sample metrics on real images: SSIM as scikit-image computes it, and the run's SSIM columns."""

import numpy as np
import torch
from skimage.metrics import structural_similarity

from nte_eval.data.textures import load_textures
from nte_eval.evaluate.cells import input_metrics
from nte_eval.metrics import psnr, ssim


def test_ssim_is_scikit_images_batched():
    x = load_textures("test", limit=30).images
    for y in (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)), x.flip(-1), x * 0.8):
        ref = [structural_similarity(u.double().numpy(), v.double().numpy(), data_range=1.0, channel_axis=0)
               for u, v in zip(y, x, strict=True)]
        assert np.allclose(ssim(y, x).numpy(), ref, atol=1e-10)
    assert torch.allclose(ssim(x, x), torch.ones(len(x), dtype=torch.float64))


def test_ssim_and_psnr_columns_of_a_cell():
    data = load_textures("test", limit=20)
    noisy = data.images + 0.1 * torch.randn(data.images.shape, generator=torch.Generator().manual_seed(1))
    measured = input_metrics(noisy, data.images, data)  # per sample: the NTEs noisy, the reconstruction clean
    assert bool((measured["recon_ssim"] == 1.0).all()) and float(measured["ssim"].mean()) < 0.9
    assert torch.equal(measured["ssim"], ssim(noisy, data.images))
    assert torch.equal(measured["psnr"], psnr(noisy, data.images))
