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
