"""
Weight-only quantized GEMM: y = x @ dequant(W)^T for QLinear's packed format, with x in bf16 or fp16 and W stored
as 2-, 3-, 4- or 8-bit codes.

Format (quantizers/format.py defines it; `reference` below is its pure-torch twin): W (N, K) is stored as
  qweight (N, ceil(K / 32) * bits) int32: input channels in chunks of 32, a chunk's 32 codes read as one 32*bits-bit
          little-endian string of `bits` words; code j of a chunk sits at bits bits*j .. bits*j + bits - 1 of it
          (3-bit codes 10 and 21 straddle two words);
  scales, zeros (N, G) in the activation dtype, G groups of K / G consecutive input channels (G = 1: per channel),
and W[n, k] = (q[n, k] - zeros[n, k // g]) * scales[n, k // g], rounded once to the activation dtype, as the twin.

Three paths compute it; `matmul` times them once per shape on first use and keeps the fastest (a choice among
kernels of one family, like an autotuner's among configurations; which layers come here at all is decided by
quantizers/core.py):
  fused     one kernel: a program owns a (BLOCK_N weight rows x BLOCK_M tokens) tile of y^T = W x^T and walks K in
            steps of BLOCK_K, unpacking and dequantizing its weight tile in registers and using it as the left
            operand of the tensor-core product, so the token dimension can be as small as 16. For M <= 64, K is
            split over up to 8 programs that add fp32 partial sums atomically (a 4096-wide layer at M = 1 is
            otherwise 32 programs for 132 SMs).
  factored  for M <= 64 at 4 bits with groups a multiple of 32: kernels/wq_factored.py, which turns codes into
            floats by a bit trick and applies scales and zeros once per chunk of inputs, not once per weight.
  unfused   a Triton kernel dequantizes W into a temporary in the activation dtype, then cuBLAS multiplies. It costs
            one layer's float weight in memory while it runs, and wins from a few hundred tokens up, where a fused
            kernel here reaches a third of cuBLAS's rate (results/kernels-h100).

    python -m kernels.wq_gemm          # on a GPU: check against the twin, then time against bf16 torch.matmul
"""
import torch
import triton
import triton.language as tl

from kernels import wq_factored
from kernels.shims import INTERPRET, dot, grid, to_dtype
from quantizers.format import dequantize, fit_grid, pack, quantize, unpack


def reference(x, qweight, scales, zeros, bits, K):
    """The pure-torch twin: x (..., K) @ dequant(W)^T -> (..., N) in x's dtype."""
    W = dequantize(unpack(qweight, bits, K), scales, zeros)
    return x @ W.to(x.dtype).T


def _configs(small):
    if small:  # (BLOCK_N, BLOCK_M, BLOCK_K, SPLIT_K, warps, stages): weight rows x tokens x inputs
        shapes = [(128, 16, 128, 8, 4, 4), (128, 16, 128, 4, 4, 4), (32, 16, 128, 8, 4, 4), (64, 64, 64, 8, 4, 4)]
    else:
        shapes = [(128, 128, 64, 1, 8, 3), (128, 256, 64, 1, 8, 3), (256, 128, 64, 1, 8, 3), (128, 64, 64, 1, 4, 4)]
    return [triton.Config({"BLOCK_N": n, "BLOCK_M": m, "BLOCK_K": k, "SPLIT_K": s}, num_warps=w, num_stages=st)
            for n, m, k, s, w, st in shapes]


@triton.jit
def _codes(qw_ptr, rn, n_ok, t, stride_qn, n_words, BITS: tl.constexpr, BLOCK_N: tl.constexpr,
           BLOCK_K: tl.constexpr):
    """The codes (BLOCK_N, BLOCK_K) of K tile t, as uint32."""
    rk = t * BLOCK_K + tl.arange(0, BLOCK_K)
    if BITS == 3:  # a code's word and shift from its bit offset in the chunk; codes 10 and 21 span two words
        bit = BITS * (rk % 32)
        shift = (bit % 32).to(tl.uint32)
        word = (rk // 32) * BITS + bit // 32
        ptr = qw_ptr + rn[:, None] * stride_qn + word[None, :]
        q = tl.load(ptr, mask=n_ok[:, None] & (word < n_words)[None, :], other=0).to(tl.uint32, bitcast=True)
        q = q >> shift[None, :]
        spill = (shift + BITS) > 32
        w1 = tl.load(ptr + 1, mask=n_ok[:, None] & (spill & (word + 1 < n_words))[None, :], other=0)
        w1 = w1.to(tl.uint32, bitcast=True)
        q = q | tl.where(spill[None, :], w1 << ((32 - shift) % 32)[None, :], 0)
    else:  # 2, 4, 8 bits: word w holds codes PER * w .. PER * w + PER - 1; load each word once, then spread it
        PER: tl.constexpr = 32 // BITS
        rw = t * (BLOCK_K // PER) + tl.arange(0, BLOCK_K // PER)
        words = tl.load(qw_ptr + rn[:, None] * stride_qn + rw[None, :], mask=n_ok[:, None] & (rw < n_words)[None, :],
                        other=0).to(tl.uint32, bitcast=True)
        shifts = (tl.arange(0, PER) * BITS).to(tl.uint32)
        q = tl.reshape(words[:, :, None] >> shifts[None, None, :], (BLOCK_N, BLOCK_K))
    return q & ((1 << BITS) - 1)


@triton.jit
def _grid(s_ptr, z_ptr, rn, n_ok, t, rk, G, GROUP, stride_sn, BLOCK_K: tl.constexpr, ALIGNED: tl.constexpr):
    """Scales and zeros (fp32) of the weights of rows rn in K tile t, shaped to broadcast over the tile."""
    if ALIGNED:  # the tile lies in one group: one scale and zero per row
        g = (t * BLOCK_K) // GROUP
        s = tl.load(s_ptr + rn * stride_sn + g, mask=n_ok, other=0.0).to(tl.float32)[:, None]
        z = tl.load(z_ptr + rn * stride_sn + g, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    else:  # groups that do not line up with tiles (tiny-dream's 74): one per element
        g = tl.minimum(rk // GROUP, G - 1)[None, :]
        s = tl.load(s_ptr + rn[:, None] * stride_sn + g, mask=n_ok[:, None], other=0.0).to(tl.float32)
        z = tl.load(z_ptr + rn[:, None] * stride_sn + g, mask=n_ok[:, None], other=0.0).to(tl.float32)
    return s, z


@triton.heuristics({"ALIGNED": lambda a: a["GROUP"] % a["BLOCK_K"] == 0})
@triton.jit
def _dequant(qw_ptr, s_ptr, z_ptr, w_ptr, N, K, G, GROUP, stride_qn, stride_sn, n_words, BITS: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EMULATE: tl.constexpr, ALIGNED: tl.constexpr):
    """W (N, K) in w's dtype, tile by tile: the first half of the many-token path (then a cuBLAS GEMM)."""
    t = tl.program_id(1)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = t * BLOCK_K + tl.arange(0, BLOCK_K)
    n_ok = rn < N
    q = _codes(qw_ptr, rn, n_ok, t, stride_qn, n_words, BITS, BLOCK_N, BLOCK_K).to(tl.float32)
    s, z = _grid(s_ptr, z_ptr, rn, n_ok, t, rk, G, GROUP, stride_sn, BLOCK_K, ALIGNED)
    tl.store(w_ptr + rn[:, None] * K + rk[None, :], to_dtype((q - z) * s, w_ptr.dtype.element_ty, EMULATE),
             mask=n_ok[:, None] & (rk < K)[None, :])


@triton.heuristics({"ALIGNED": lambda a: a["GROUP"] % a["BLOCK_K"] == 0})
@triton.jit
def _wq_gemm(x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr, M, N, K, G, GROUP, stride_xm, stride_qn, stride_sn, stride_ym,
             n_words, M_BUCKET, BITS: tl.constexpr, ATOMIC: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, DOT_F32: tl.constexpr,
             ALIGNED: tl.constexpr):
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_ok, m_ok = rn < N, rm < M
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    for t in range(pid_k * per_split, tl.minimum((pid_k + 1) * per_split, k_tiles)):
        rk = t * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        q = _codes(qw_ptr, rn, n_ok, t, stride_qn, n_words, BITS, BLOCK_N, BLOCK_K).to(tl.float32)
        s, z = _grid(s_ptr, z_ptr, rn, n_ok, t, rk, G, GROUP, stride_sn, BLOCK_K, ALIGNED)
        w = to_dtype((q - z) * s, x_ptr.dtype.element_ty, DOT_F32)  # (BLOCK_N, BLOCK_K), rounded once, as the twin
        xt = tl.load(x_ptr + rm[None, :] * stride_xm + rk[:, None], mask=m_ok[None, :] & k_ok[:, None], other=0.0)
        acc = dot(w, xt, acc, DOT_F32)
    out = y_ptr + rm[None, :] * stride_ym + rn[:, None]
    if ATOMIC:
        tl.atomic_add(out, acc, mask=n_ok[:, None] & m_ok[None, :])
    else:
        tl.store(out, to_dtype(acc, y_ptr.dtype.element_ty, DOT_F32), mask=n_ok[:, None] & m_ok[None, :])


CONFIGS = {True: _configs(True), False: _configs(False)}  # few tokens (split K, atomic fp32 sums) / many tokens
KEY = ["M_BUCKET", "N", "K", "GROUP", "BITS"]
_small = triton.autotune(CONFIGS[True], key=KEY, reset_to_zero=["y_ptr"])(_wq_gemm)
_large = triton.autotune(CONFIGS[False], key=KEY)(_wq_gemm)


def dequantize_weight(qweight, scales, zeros, bits, K):
    """W (N, K) in the scales' dtype, by the Triton dequantization kernel (the same rounding as the twin)."""
    N, G = qweight.shape[0], scales.shape[1]
    W = torch.empty(N, K, device=qweight.device, dtype=scales.dtype)
    _dequant[(triton.cdiv(N, 64), triton.cdiv(K, 128))](qweight, scales, zeros, W, N, K, G, K // G, qweight.stride(0),
                                                        G, qweight.shape[1], BITS=bits, BLOCK_N=64, BLOCK_K=128,
                                                        EMULATE=INTERPRET)
    return W


def fused(x2, qweight, scales, zeros, bits, K, config=None, out=None):
    """x2 (M, K) @ dequant(W)^T in one kernel: the weights are dequantized in registers."""
    M, N, G = x2.shape[0], qweight.shape[0], scales.shape[1]
    config = CONFIGS[M <= 64][0] if config is None and INTERPRET else config
    few = M <= 64 if config is None else config in CONFIGS[True]  # fp32 partial sums added atomically
    if few:
        y = torch.zeros(M, N, device=x2.device, dtype=torch.float32)
    else:
        y = out if out is not None else torch.empty(M, N, device=x2.device, dtype=x2.dtype)
    args = (x2, qweight, scales, zeros, y, M, N, K, G, K // G, x2.stride(0), qweight.stride(0), G, y.stride(0),
            qweight.shape[1], triton.next_power_of_2(M))
    flags = dict(BITS=bits, ATOMIC=few, DOT_F32=INTERPRET)
    if config is None:
        (_small if few else _large)[lambda meta: grid(M, N, meta)](*args, **flags)
    else:
        _wq_gemm[grid(M, N, config.kwargs)](*args, **flags, **config.kwargs, num_warps=config.num_warps,
                                            num_stages=config.num_stages)
    if few and out is not None:
        return out.copy_(y)
    return y.to(x2.dtype) if few else y


def unfused(x2, qweight, scales, zeros, bits, K, out=None):
    """x2 (M, K) @ dequant(W)^T as the Triton dequantization of W into a temporary, then a cuBLAS GEMM."""
    W = dequantize_weight(qweight, scales, zeros, bits, K)
    return torch.matmul(x2, W.T, out=out) if out is not None else x2 @ W.T


PATHS = {}  # (M bucket, N, K, G, bits, dtype) -> "fused", "factored" or "unfused", whichever ran fastest there


def paths(M, bits, K, G, dtype):
    """The paths that take a layer: {name: function}."""
    few = M <= 64 and wq_factored.chunk_of(bits, K, G, dtype) is not None
    return {"fused": fused, "unfused": unfused, **({"factored": wq_factored.matmul} if few else {})}


def choose(x2, qweight, scales, zeros, bits, K):
    key = (triton.next_power_of_2(x2.shape[0]), qweight.shape[0], K, scales.shape[1], bits, x2.dtype)
    if key not in PATHS:
        from triton.testing import do_bench
        times = {name: do_bench(lambda f=f: f(x2, qweight, scales, zeros, bits, K), warmup=5, rep=20)
                 for name, f in paths(x2.shape[0], bits, K, scales.shape[1], x2.dtype).items()}
        PATHS[key] = min(times, key=times.get)
    return PATHS[key]


def matmul(x, qweight, scales, zeros, bits, K, path=None, config=None, out=None):
    """x (..., K) bf16/fp16 @ dequant(W)^T -> (..., N) in x's dtype by Triton kernels. path: "fused", "factored" or
    "unfused" instead of the fastest, timed once per shape; config: a triton.Config of CONFIGS[True] (few tokens) or
    CONFIGS[False] (or of wq_factored.CONFIGS for "factored") instead of the autotuned one (the tests run each; the
    interpreter cannot time). out: (M, N) in x's dtype to write into."""
    if x.dtype not in (torch.bfloat16, torch.float16) or x.shape[-1] != K or scales.dtype != x.dtype or \
            qweight.shape[1] != -(-K // 32) * bits:
        raise ValueError(f"wq_gemm: x (..., {x.shape[-1]}) {x.dtype}, qweight {tuple(qweight.shape)}, scales "
                         f"{scales.dtype} do not fit a {bits}-bit layer of {K} inputs in bf16 or fp16")
    x2 = x.reshape(-1, K)
    x2 = x2 if x2.stride(1) == 1 else x2.contiguous()
    scales, zeros = scales.contiguous(), zeros.contiguous()
    path = path or ("fused" if INTERPRET or config is not None else choose(x2, qweight, scales, zeros, bits, K))
    if path == "fused":
        y = fused(x2, qweight, scales, zeros, bits, K, config, out)
    elif path == "factored":
        y = wq_factored.matmul(x2, qweight, scales, zeros, bits, K, config, out)
    else:
        y = unfused(x2, qweight, scales, zeros, bits, K, out)
    return y.view(*x.shape[:-1], qweight.shape[0])


# ------------------------------------------------------------------------------------------ check and benchmark
SHAPES = {"LLaDA q/k/v/o": (4096, 4096), "LLaDA gate/up": (12288, 4096), "LLaDA down": (4096, 12288),
          "Dream q/o": (3584, 3584), "Dream k/v": (512, 3584), "Dream gate/up": (18944, 3584),
          "Dream down": (3584, 18944)}  # name: (N, K)
TOKENS = (1, 16, 64, 256, 512, 1024, 2048, 4096)


def _layer(N, K, bits, group):
    W = torch.randn(N, K, device="cuda") * 0.02
    s, z = fit_grid(W, bits, group)
    return W.bfloat16(), pack(quantize(W, s, z, bits), bits), s.bfloat16(), z.bfloat16()


def bench(bits_list=(4, 8, 3, 2), group=128):
    """Check every path against the twin on every shape, then time them against bf16 F.linear, each in a CUDA graph
    (GPU time, no launch overhead), side by side; prints a markdown table and returns its rows."""
    from triton.testing import do_bench_cudagraph
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"weights g{group} asymmetric, bf16 activations, times in a CUDA graph\n")
    print("| layer (N x K) | M | bits | bf16 µs | fused µs | factored µs | unfused µs | best vs bf16 | best TFLOP/s | "
          "best GB/s |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name, (N, K) in SHAPES.items():
        for bits in bits_list:
            W, qw, s, z = _layer(N, K, bits, group)
            for M in TOKENS if bits == 4 else (16, 1024):
                x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
                ref = x.float() @ dequantize(unpack(qw, bits, K), s, z).float().T
                t_ref = do_bench_cudagraph(lambda: torch.nn.functional.linear(x, W)) * 1e3  # noqa: B023
                times = {}
                for path in paths(M, bits, K, s.shape[1], x.dtype):
                    y = matmul(x, qw, s, z, bits, K, path=path)
                    err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                    if err > 1e-2:
                        raise SystemExit(f"{name} M={M} W{bits} {path}: differs from the twin by {err:.2e}")
                    times[path] = do_bench_cudagraph(lambda p=path: matmul(x, qw, s, z, bits, K, path=p)) * 1e3  # noqa: B023
                t = min(times.values())
                moved = qw.numel() * 4 + 2 * s.numel() * 2 + 2 * M * (K + N)
                rows.append((name, N, K, M, bits, t_ref, t))
                cells = " | ".join(f"{times[p]:.1f}" if p in times else "-" for p in ("fused", "factored", "unfused"))
                print(f"| {name} ({N} x {K}) | {M} | {bits} | {t_ref:.1f} | {cells} | {t_ref / t:.2f}x | "
                      f"{2 * M * N * K / t / 1e6:.1f} | {moved / t / 1e3:.0f} |", flush=True)
    for bits in bits_list:
        for label, pick in (("M <= 16", lambda m: m <= 16), ("M >= 512", lambda m: m >= 512)):
            r = [t_ref / t for _, _, _, m, b, t_ref, t in rows if b == bits and pick(m)]
            if r:
                print(f"W{bits}A16, {label}: {min(r):.2f}x to {max(r):.2f}x bf16 (geometric mean "
                      f"{torch.tensor(r).log().mean().exp():.2f}x over {len(r)} layer shapes x token counts)")
    return rows


if __name__ == "__main__":
    bench()
