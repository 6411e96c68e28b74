"""Without a GPU, Triton kernels run in Triton's CPU interpreter (chosen before triton is imported) and the tests marked
gpu are skipped."""
import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
if "PYTEST_XDIST_WORKER" in os.environ:  # pytest -n N: one core per worker, for its tests and the CLIs they start
    torch.set_num_threads(1)  # (two torch threads in each of two workers on two cores made the suite slower)
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def _seed(request):
    """Each test draws from its own seed (its name's CRC), so a failure in CI reproduces here in any test order."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
