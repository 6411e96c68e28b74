"""
Ways to feed 4-bit weights to Hopper's tensor cores from Triton, each timed beside bf16 F.linear and the shipped
kernel (kernels/wa_gemm.py's w4a8, kernels/wq_gemm.py's best path) in one run; every variant is first checked against
the twin. An experiment kept for its numbers (README.md here), not a kernel the package uses.

W4A8 (per-channel 4-bit codes, int8 activations per token, int32 sums, scales in the epilogue):
  cur     kernels/wa_gemm.py: per 256 channels, 8 products of K = 32, each nibble plane of 32 words the register
          operand against 32 activations stored next to each other (act_quant's int8x order)
  joinA   per 256 channels one (BLOCK_N, 256) int8 tile made by tl.join of the 8 nibble planes (the joined axis
          stays in one thread), the weights the register operand; position p of a chunk then holds channel
          8 (p >> 3) + bitreverse3(p & 7), so the activations are permuted to that order before the timed call
  joinB   the same tile as the shared-memory operand (x the left operand, the accumulator (BLOCK_M, BLOCK_N))
  planeB  cur's 8 products with the weights as the shared-memory operand
  byteA   the codes read as bytes (low nibble channel 2q, high 2q + 1): tl.join(b & 15, b >> 4) is the tile in
          channel order, against plain int8 activations; weights the register operand
  byteB   the same, weights the shared-memory operand
W4A16 g128 (--w4a16): the codes read as bytes and joined as in byteA, made bf16 128 + q by OR-ing 0x4300 into the
bits (FasterTransformer's trick), minus 128 + z (exact in bf16), one bf16 product per group of 128 inputs scaled
in fp32; weights the register operand (A) or the shared-memory one (B).

    python results/speed-h200/w4_variants.py            # on a GPU, from the repository root
    python results/speed-h200/w4_variants.py --w4a16
"""
import os
import sys

import torch
import triton
import triton.language as tl
from triton.testing import do_bench_cudagraph

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from kernels import act_quant, wa_gemm  # noqa: E402
from quantizers.format import fit_grid, pack, quantize  # noqa: E402


@triton.jit
def _k(a_ptr, b_ptr, sa_ptr, sum_ptr, sb_ptr, zb_ptr, c_ptr, M, N, K, stride_am, stride_bn, stride_cm,
       V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
       GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    grid_m, grid_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    first_m = pid // (GROUP_M * grid_n) * GROUP_M
    size_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * grid_n)) % size_m
    pid_n = (pid % (GROUP_M * grid_n)) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = rm < M, rn < N
    if V == 0 or V == 3:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    j = tl.arange(0, 32)
    p = tl.arange(0, 256)
    if V >= 3:  # bytes: (BN, BK/2) uint8, low nibble channel 2q, high 2q + 1; natural int8 activations
        h = tl.arange(0, BLOCK_K // 2)
        rk = tl.arange(0, BLOCK_K)
        for k0 in range(0, K, BLOCK_K):
            by = tl.load(b_ptr + rn[:, None] * stride_bn + (k0 // 2 + h)[None, :], mask=n_ok[:, None], other=0)
            w = tl.reshape(tl.join(by & 15, by >> 4), (BLOCK_N, BLOCK_K)).to(tl.int8, bitcast=True)
            if V == 3:
                xt = tl.load(a_ptr + rm[None, :] * stride_am + (k0 + rk)[:, None], mask=m_ok[None, :], other=0)
                acc = tl.dot(w, xt, acc, out_dtype=tl.int32)
            else:
                x = tl.load(a_ptr + rm[:, None] * stride_am + (k0 + rk)[None, :], mask=m_ok[:, None], other=0)
                acc = tl.dot(x, tl.trans(w), acc, out_dtype=tl.int32)
    if V < 3:
        for k0 in range(0, K, 256):
            rw = k0 // 8 + j
            words = tl.load(b_ptr + rn[:, None] * stride_bn + rw[None, :], mask=n_ok[:, None], other=0)
            if V == 2:  # planeB
                for i in tl.static_range(8):
                    w = ((words >> 4 * i) & 15).to(tl.int8)
                    pk = k0 + 32 * i + j
                    x = tl.load(a_ptr + rm[:, None] * stride_am + pk[None, :], mask=m_ok[:, None], other=0)
                    acc = tl.dot(x, tl.trans(w), acc, out_dtype=tl.int32)
            else:
                n0 = (words & 15).to(tl.int8)
                n1 = ((words >> 4) & 15).to(tl.int8)
                n2 = ((words >> 8) & 15).to(tl.int8)
                n3 = ((words >> 12) & 15).to(tl.int8)
                n4 = ((words >> 16) & 15).to(tl.int8)
                n5 = ((words >> 20) & 15).to(tl.int8)
                n6 = ((words >> 24) & 15).to(tl.int8)
                n7 = ((words >> 28) & 15).to(tl.int8)
                c = tl.join(tl.join(tl.join(n0, n1), tl.join(n2, n3)), tl.join(tl.join(n4, n5), tl.join(n6, n7)))
                w = tl.reshape(c, (BLOCK_N, 256))
                if V == 0:
                    xt = tl.load(a_ptr + rm[None, :] * stride_am + (k0 + p)[:, None], mask=m_ok[None, :], other=0)
                    acc = tl.dot(w, xt, acc, out_dtype=tl.int32)
                else:
                    x = tl.load(a_ptr + rm[:, None] * stride_am + (k0 + p)[None, :], mask=m_ok[:, None], other=0)
                    acc = tl.dot(x, tl.trans(w), acc, out_dtype=tl.int32)
    if V == 0 or V == 3:
        acc = tl.trans(acc)
    z = tl.load(zb_ptr + rn, mask=n_ok, other=0.0).to(tl.float32).to(tl.int32)
    acc -= tl.load(sum_ptr + rm, mask=m_ok, other=0)[:, None] * z[None, :]
    sa = tl.load(sa_ptr + rm, mask=m_ok, other=0.0)
    sb = tl.load(sb_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    y = acc.to(tl.float32) * sa[:, None] * sb[None, :]
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], y.to(c_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


CFGS = [(128, 128, 256, 8, 3), (128, 256, 256, 8, 3), (256, 128, 256, 8, 3), (64, 128, 256, 4, 3),
        (128, 128, 128, 4, 4), (128, 256, 128, 8, 4), (256, 128, 128, 8, 4)]
TUNED = triton.autotune([triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w,
                                       num_stages=s) for m, n, k, w, s in CFGS], key=["M", "N", "K", "V"])(_k)


def run(V, xq, sx, sums, w, sw, zw, K):
    M, N = xq.shape[0], w.shape[0]
    y = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
    TUNED[lambda m: (triton.cdiv(M, m["BLOCK_M"]) * triton.cdiv(N, m["BLOCK_N"]),)](
        xq, w, sx, sums, sw, zw, y, M, N, K, xq.stride(0), w.stride(0), y.stride(0), V=V)
    return y


def join_order(K):
    p = torch.arange(K)
    q = p % 256
    lo = q & 7
    rev = ((lo & 1) << 2) | (lo & 2) | ((lo >> 2) & 1)
    return p - q + 8 * (q >> 3) + rev  # channel held at position p


def main():
    t = lambda f: do_bench_cudagraph(f) * 1e3  # noqa: E731
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    print("| layer | M | bf16 us | cur | joinA | joinB | planeB | byteA | byteB | best cfg (same order) |")
    print("|---" * 10 + "|")
    for name, (N, K) in {"q/k/v/o": (4096, 4096), "gate/up": (12288, 4096), "down": (4096, 12288),
                         "Dream gate/up": (18944, 3584)}.items():
        W = torch.randn(N, K, device="cuda") * 0.02
        s, z = fit_grid(W, 4, -1)
        q = quantize(W, s, z, 4)
        qw, sw, zw = pack(q, 4), s.bfloat16(), z.bfloat16()
        Wb = W.bfloat16()
        for M in (256, 512, 1024, 2048):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            xq, sx, sums = act_quant.quantize(x, "int8x")
            xi, sxi, sumsi = act_quant.quantize(x, "int8")
            ref = wa_gemm.reference(xq, sx, qw, sw, zw, "w4a8", K, None, torch.float32)
            Kp = -(-K // 256) * 256
            xj = torch.zeros(M, Kp, device="cuda", dtype=torch.int8)
            order = join_order(Kp).cuda()
            valid = order < K
            xj[:, valid] = xi[:, order[valid]]
            cells, cfg = [], []
            tb = t(lambda: torch.nn.functional.linear(x, Wb))  # noqa: B023
            tc = t(lambda: wa_gemm.matmul(xq, sx, sums, qw, sw, zw, "w4a8", K))  # noqa: B023
            qb = qw.view(torch.uint8)
            for V, xa, wv in ((0, xj, qw), (1, xj, qw), (2, xq, qw), (3, xi, qb), (4, xi, qb)):
                y = run(V, xa, sx, sums, wv, sw, zw, K)
                err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                if err > 2e-2:
                    cells.append(f"wrong {err:.1e}")
                    cfg.append("-")
                    continue
                tv = t(lambda: run(V, xa, sx, sums, wv, sw, zw, K))  # noqa: B023
                c = TUNED.best_config
                cells.append(f"{tv:.1f} ({tb / tv:.2f}x)")
                cfg.append(f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}x{c.kwargs['BLOCK_K']}w{c.num_warps}s{c.num_stages}")
            print(f"| {name} {N}x{K} | {M} | {tb:.1f} | {tc:.1f} ({tb / tc:.2f}x) | " + " | ".join(cells) +
                  " | " + " / ".join(cfg) + " |", flush=True)




# ---------------------------------------------------------------- W4A16 g128: bytes joined, 0x4300 | q, per-group scale
@triton.jit
def _w16(x_ptr, b_ptr, s_ptr, z_ptr, c_ptr, M, N, K, stride_xm, stride_bn, stride_sn, stride_cm,
         V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
         GROUP_M: tl.constexpr, GS: tl.constexpr):
    pid = tl.program_id(0)
    grid_m, grid_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    first_m = pid // (GROUP_M * grid_n) * GROUP_M
    size_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * grid_n)) % size_m
    pid_n = (pid % (GROUP_M * grid_n)) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = rm < M, rn < N
    h = tl.arange(0, BLOCK_K // 2)
    rk = tl.arange(0, BLOCK_K)
    if V == 0:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        by = tl.load(b_ptr + rn[:, None] * stride_bn + (k0 // 2 + h)[None, :], mask=n_ok[:, None], other=0)
        q = tl.reshape(tl.join(by & 15, by >> 4), (BLOCK_N, BLOCK_K)).to(tl.uint16)
        g = k0 // GS
        z = (tl.load(z_ptr + rn * stride_sn + g, mask=n_ok, other=0.0).to(tl.float32) + 128.0).to(tl.bfloat16)
        s = tl.load(s_ptr + rn * stride_sn + g, mask=n_ok, other=0.0).to(tl.float32)
        wv = (q | 0x4300).to(tl.bfloat16, bitcast=True) - z[:, None]
        if V == 0:
            xt = tl.load(x_ptr + rm[None, :] * stride_xm + (k0 + rk)[:, None], mask=m_ok[None, :], other=0.0)
            acc += tl.dot(wv, xt) * s[:, None]
        else:
            x = tl.load(x_ptr + rm[:, None] * stride_xm + (k0 + rk)[None, :], mask=m_ok[:, None], other=0.0)
            acc += tl.dot(x, tl.trans(wv)) * s[None, :]
    if V == 0:
        acc = tl.trans(acc)
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], acc.to(tl.bfloat16), mask=m_ok[:, None] & n_ok[None, :])


CFG16 = [(128, 128, 128, 8, 3), (128, 256, 128, 8, 3), (256, 128, 128, 8, 3), (128, 128, 64, 4, 4),
         (128, 256, 64, 8, 4), (64, 128, 128, 4, 4)]
T16 = triton.autotune([triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8, "GS": 128},
                                     num_warps=w, num_stages=s) for m, n, k, w, s in CFG16],
                      key=["M", "N", "K", "V"])(_w16)


def run16(V, x, qb, s, z):
    M, K = x.shape
    N = qb.shape[0]
    y = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
    T16[lambda m: (triton.cdiv(M, m["BLOCK_M"]) * triton.cdiv(N, m["BLOCK_N"]),)](
        x, qb, s, z, y, M, N, K, x.stride(0), qb.stride(0), s.stride(0), y.stride(0), V=V)
    return y


def main16():
    from kernels import wq_gemm
    t = lambda f: do_bench_cudagraph(f) * 1e3  # noqa: E731
    print("\nW4A16 g128\n| layer | M | bf16 us | shipped wq_gemm | A (register) | B (smem) | cfg A / B |")
    print("|---" * 7 + "|")
    for name, (N, K) in {"q/k/v/o": (4096, 4096), "gate/up": (12288, 4096), "down": (4096, 12288),
                         "Dream gate/up": (18944, 3584)}.items():
        W = torch.randn(N, K, device="cuda") * 0.02
        s, z = fit_grid(W, 4, 128, dtype=torch.bfloat16)
        q = quantize(W, s, z, 4)
        qw, sb, zb = pack(q, 4), s.bfloat16(), z.bfloat16()
        qb = qw.view(torch.uint8)
        Wb = W.bfloat16()
        for M in (16, 256, 512, 1024, 2048):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            ref = wq_gemm.reference(x.float(), qw, s, z, 4, K)
            tb = t(lambda: torch.nn.functional.linear(x, Wb))  # noqa: B023
            ts = t(lambda: wq_gemm.matmul(x, qw, sb, zb, 4, K))  # noqa: B023
            cells, cfg = [], []
            for V in (0, 1):
                y = run16(V, x, qb, sb, zb)
                err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                if err > 1e-2:
                    cells.append(f"wrong {err:.1e}")
                    cfg.append("-")
                    continue
                tv = t(lambda: run16(V, x, qb, sb, zb))  # noqa: B023
                c = T16.best_config
                cells.append(f"{tv:.1f} ({tb / tv:.2f}x)")
                cfg.append(f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}x{c.kwargs['BLOCK_K']}w{c.num_warps}")
            print(f"| {name} {N}x{K} | {M} | {tb:.1f} | {ts:.1f} ({tb / ts:.2f}x) | " + " | ".join(cells) + " | " +
                  " / ".join(cfg) + " |", flush=True)


if __name__ == "__main__":
    main16() if "--w4a16" in sys.argv[1:] else main()
