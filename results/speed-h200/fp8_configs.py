"""
kernels/wa_gemm.py's FP8 GEMM at the token counts of a LLaDA-8B generation step (M = 320: a 64-token prompt and a
256-token canvas; M = 576: the prompt and 512 new tokens), with every configuration it autotunes over and a few more (K split in
two; 64 x 256 and 128 x 64 tiles) forced one at a time, beside bf16 F.linear and torch._scaled_mm (cuBLAS FP8)
on the same operands; times in µs in a CUDA graph. An experiment kept for its numbers (README.md here).

    python results/speed-h200/fp8_configs.py     # on a GPU, from the repository root
"""
import os
import sys

import torch
import triton
from triton.testing import do_bench_cudagraph

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from kernels import act_quant, wa_gemm  # noqa: E402

EXTRA = [(64, 256, 128, 1, 8, 3), (128, 128, 128, 2, 8, 4), (64, 128, 128, 2, 4, 4), (128, 256, 128, 2, 8, 3),
         (64, 256, 128, 2, 8, 3), (128, 64, 128, 1, 4, 4)]
cfgs = wa_gemm.CONFIGS + [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8, "SPLIT_K": sk},
                                        num_warps=w, num_stages=s) for m, n, k, sk, w, s in EXTRA]
t = lambda f: do_bench_cudagraph(f) * 1e3  # noqa: E731
print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
for M in (320, 576):
    print(f"\nM = {M}\n| layer | bf16 us | _scaled_mm us | autotuned us | " +
          " | ".join(f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}s{c.kwargs['SPLIT_K']}w{c.num_warps}" for c in cfgs)
          + " |\n" + "|---" * (4 + len(cfgs)) + "|")
    for name, (N, K) in list(wa_gemm.SHAPES.items())[:3]:
        W, (qw, s, z) = wa_gemm._layer(N, K, "fp8")
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        xq, sx, _ = act_quant.quantize(x, "fp8")
        w = wa_gemm.weight_operand(qw, "fp8")
        tb = t(lambda: torch.nn.functional.linear(x, W))  # noqa: B023
        sw32, sx32 = s.float().view(1, -1), sx.view(-1, 1)
        ts = t(lambda: torch._scaled_mm(xq, w.T, scale_a=sx32, scale_b=sw32, out_dtype=torch.bfloat16))  # noqa: B023
        ta = t(lambda: wa_gemm.matmul(xq, sx, None, w, s, z, "fp8", K))  # noqa: B023
        cells = []
        for c in cfgs:
            try:
                cells.append(f"{t(lambda: wa_gemm.matmul(xq, sx, None, w, s, z, 'fp8', K, config=c)):.1f}")  # noqa
            except Exception as e:  # noqa: BLE001
                cells.append(type(e).__name__)
        print(f"| {name} | {tb:.1f} | {ts:.1f} | {ta:.1f} | " + " | ".join(cells) + " |", flush=True)
