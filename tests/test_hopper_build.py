"""The GEMM configs kernels/wa_gemm.py ships, as Hopper builds them, checked without a GPU (kernels/hopper_builds.py):
Triton and the ptxas it ships compile each for sm_90a, and each must fit a block's shared memory. On the GPU the
autotuner drops a config that does not fit without a word (it times it as infinitely slow), so a change to the
kernel that made a tile's buffers outgrow 227 KB would quietly take that tile away from every layer that chose it."""
import os
import re
import subprocess
import sys

from kernels import wa_gemm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_shipped_wa_gemm_config_fits_hopper():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # (compiled, not interpreted)
    out = subprocess.run([sys.executable, "-m", "kernels.hopper_builds", "--kernels", "wa_gemm"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    builds = sum(len(wa_gemm.configs(f, few)) * (2 if f in wa_gemm.NIBBLES else 1)  # (K whole and ragged)
                 for f in wa_gemm.FMT for few in (False, True))
    summary = re.search(r"(\d+) builds; (\d+) need more than", out.stdout)
    assert summary and int(summary[1]) == builds, out.stdout[-2000:]
    assert summary[2] == "0", out.stdout[-2000:]
