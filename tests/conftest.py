"""Without a GPU, Triton kernels run in Triton's CPU interpreter; it must be chosen before triton is imported."""
import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed(request):
    """Each test draws from its own seed (its name's CRC), so a failure in CI reproduces here in any test order."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
