"""The GEMM configs kernels/wa_gemm.py ships, as Hopper builds them, checked without a GPU: Triton and the ptxas it
ships compile each for sm_90, and each must fit a block's shared memory. On the GPU the autotuner drops a config
that does not fit without a word (it times it as infinitely slow), so a change to the kernel that makes a tile's
buffers outgrow 227 KB would quietly take that tile away from every layer that chose it."""
import os
import subprocess
import sys

from kernels import wa_gemm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOPPER_SHARED = 232448  # bytes of shared memory a block may have on sm_90 (227 KB)
CHECK = """
from kernels import wa_gemm
for fmt in wa_gemm.FMT:
    for few in (False, True):
        for c in wa_gemm.configs(fmt, few):
            shared, regs, stack, _ = wa_gemm._machine_code(wa_gemm._hopper(fmt, c))
            print(fmt, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.kwargs["SPLIT_K"],
                  c.num_warps, c.num_stages, shared)
"""


def test_every_shipped_config_fits_hopper():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # (compiled, not interpreted)
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split() for line in out.stdout.splitlines()]
    assert len(rows) == sum(len(wa_gemm.configs(f, few)) for f in wa_gemm.FMT for few in (False, True))
    for *config, shared in rows:  # (config: format, BLOCK_M, N, K, SPLIT_K, warps, stages)
        assert int(shared) <= HOPPER_SHARED, f"{config}: {shared} bytes of shared memory"
