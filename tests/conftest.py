"""Test-wide settings. TRITON_INTERPRET must be set before any Triton kernel module is imported: no
machine here has a GPU, so the Triton kernels run on CPU tensors through the interpreter."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
