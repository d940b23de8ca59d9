"""Test-wide settings. TRITON_INTERPRET must be set before any Triton kernel module is imported: no
machine here has a GPU, so the Triton kernels run on CPU tensors through the interpreter."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_configure(config):
    for backend in ("cpu", "triton"):
        config.addinivalue_line("markers", f"{backend}: runs the {backend} backend (tests/helpers.py)")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """torch on one thread for the test (tiny problems that a thread pool only slows down)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def poison():
    """Every fresh torch.empty allocation (a layer's outputs and internal buffers included) filled with
    NaN (max int for integers): deterministic mode with fill_uninitialized_memory. Any element a kernel
    fails to write shows up as NaN."""
    old = torch.are_deterministic_algorithms_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        assert torch.empty(3, dtype=torch.float64).isnan().all()  # the poisoning is really active
        assert torch.empty(3).isnan().all()
        yield
    finally:
        torch.use_deterministic_algorithms(old)
        torch.utils.deterministic.fill_uninitialized_memory = old_fill
