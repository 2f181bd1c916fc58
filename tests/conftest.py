"""Shared test settings."""

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Small tensors: one intra-op thread is fastest, and avoids OpenMP/BLAS spin contention on a busy 2-core CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):  # numpy/scipy BLAS too: two OpenBLAS threads on a busy 2-core machine spin
        yield
    torch.set_num_threads(before)


@pytest.fixture
def rendered_ink(tmp_path):
    """A function rendering a PDF with pdftoppm (30 dpi) and returning each page's share of inked pixels; it skips
    without poppler-utils, or fails where NTE_EVAL_REQUIRE_PDFTOPPM is set (.ci/run sets it)."""
    import os
    import shutil
    import subprocess

    import numpy as np
    from PIL import Image

    def render(pdf) -> list[float]:
        if shutil.which("pdftoppm") is None:
            if os.environ.get("NTE_EVAL_REQUIRE_PDFTOPPM"):
                pytest.fail("pdftoppm is missing: install Debian's poppler-utils (.ci/run does).")
            pytest.skip("pdftoppm (poppler-utils) is not installed")
        subprocess.run(["pdftoppm", "-png", "-r", "30", str(pdf), str(tmp_path / "page")], check=True)
        pages = sorted(tmp_path.glob("page-*.png"), key=lambda p: int(p.stem.split("-")[1]))
        return [float((np.asarray(Image.open(p).convert("L"), dtype=np.float64) < 200).mean()) for p in pages]

    return render
