"""Shared test settings and the one finished quickstart run that tests reading a run share."""

from pathlib import Path

import pytest
import torch
import yaml
from threadpoolctl import threadpool_limits

from nte_eval.cli import main


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


QUICKSTART = Path(__file__).parents[1] / "examples" / "quickstart.yaml"


def plumbing_quickstart() -> dict:
    """The quickstart suite (every built-in attack, both designated models, every encoder setting, certification)
    shrunk where only plumbing is checked: 40 evaluated images, a short learned-denoiser training, two fidelity
    PSNRs, the degradation study for the designated models' pairs and 4 local-estimate samples. The report and its
    pages have the quickstart's structure; strength is measured elsewhere (the README's full run, attack tests)."""
    suite = yaml.safe_load(QUICKSTART.read_text())
    suite["data"]["limit"] = 40
    suite["attacks"] = [{"type": "learned_denoiser", "steps": 40, "pairs": 128, "width": 16}
                        if a == "learned_denoiser" else a for a in suite["attacks"]]
    suite["certify"].update(psnr=[30, 0], pairs="designated", local_samples=4)
    return suite


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> Path:
    """One finished plumbing-sized quickstart run through the CLI, shared by every test that reads a finished run
    (read-only: a test that changes files copies the folder first)."""
    root = tmp_path_factory.mktemp("quickstart")
    (root / "quickstart.yaml").write_text(yaml.safe_dump(plumbing_quickstart(), sort_keys=False))
    assert main(["run", str(root / "quickstart.yaml"), "--out", str(root / "out"), "--quiet", "--threads", "1"]) == 0
    return root / "out"
