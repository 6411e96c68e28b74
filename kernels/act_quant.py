"""
Per-token activation quantization for the W8A8 and W4A4 GEMMs (kernels/wa_gemm.py), with QuaRot's online Hadamard
rotation optionally applied in the same pass.

Format (`reference` below is the pure-torch twin that defines it). Each token (row) x of X (M, K) gets one scale
  s = max|x| * clip / QMAX   (1 where the row is all zeros)
and its values v = x / s become
  fp8   e4m3 (QMAX 448), round to nearest even, saturated: (M, K) torch.float8_e4m3fn;
  int8  clamp(round(v), -128, 127) (QMAX 127): (M, K) int8;
  int4  clamp(round(v), -8, 7) (QMAX 7), stored as codes v + 8 packed by quantizers/core.pack (8 to an int32
        word, code j in bits 4j .. 4j + 3, chunks of 32 channels padded with code 0): (M, ceil(K / 32) * 4) int32.
The integer grids are exactly core.quantize_tokens' symmetric grid (clip < 1 saturates at -2^(b-1) and 2^(b-1) - 1),
so a dequantized int8/int4 output equals the fake quantization the torch model applies. Scales are (M,) float32.

Rotation. QuaRot's online Hadamard of the down projection is x -> x (H_m (x) H_b) / sqrt(m b) (quantizers/quarot.py
builds it as a core.Rotation: a shared Sylvester H_b / sqrt(b) on each of the m blocks of b channels, then the mix
H_m / sqrt(m) across blocks). Its kernel (_quant) holds a whole token in registers as an (m, b) tile, applies H_b
by the fast Walsh-Hadamard transform (log2 b rounds of pairwise sums and differences: Pease's constant-geometry
form, in which every round is the same reshape) and the mix by one product of the (m, m) matrix with the tile (by
fp32 FMAs: on the H100 1.5x faster than on the tensor cores in tf32x3), then quantizes. The rotation is computed
in fp32; the twin computes it in fp32 too.
That covers m <= 16 with b >= 16 (LLaDA-8B's 12288 = 12 x 1024, powers of two); any other rotation (Dream-7B's
18944 = 148 x 128, DuQuant's) is applied by torch in x's dtype before the kernel quantizes. Without a rotation,
a token is read in chunks (_quant_rows), twice: once for its scale and once to encode it.

    python -m kernels.act_quant         # on a GPU: check against the twin, then time with and without the rotation
"""
import math
import os

import torch
import triton
import triton.language as tl

from quantizers.core import pack, unpack

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
QMAX = {"fp8": 448.0, "int8": 127.0, "int4": 7.0}
FMT = {"fp8": 0, "int8": 1, "int4": 2}


def reference(x, fmt, clip=1.0, rotation=None):
    """The pure-torch twin: x (..., K) -> (codes, scales (M,) float32), M the number of tokens. The rotation is
    applied in fp32, as the kernel applies QuaRot's Hadamard; `quantize` applies any other rotation in x's dtype,
    so there it equals reference(rotation(x))."""
    x = x.reshape(-1, x.shape[-1]).float()
    if rotation is not None:
        x = rotation(x)  # a Rotation casts its matrices to x's dtype: fp32 here
    s = x.abs().amax(-1) * clip / QMAX[fmt]
    s = torch.where(s > 0, s, 1.0)
    v = x / s[:, None]
    if fmt == "fp8":
        return v.clamp(-448, 448).to(torch.float8_e4m3fn), s
    lo = -128 if fmt == "int8" else -8
    q = torch.clamp(torch.round(v), lo, -lo - 1)
    return (q.to(torch.int8) if fmt == "int8" else pack((q + 8).to(torch.uint8), 4)), s


def dequantize(q, s, fmt, K):
    """codes and scales -> the float32 values (M, K) they stand for."""
    if fmt == "int4":
        q = unpack(q, 4, K).float() - 8
    return q.float() * s[:, None]


def hadamard_form(rotation):
    """(m, b, mix (m, m) fp32 or None) when `rotation` is QuaRot's H_m (x) H_b with b a power of two, which the
    kernel applies itself; None for any other rotation (DuQuant's, a dense random one). Worked out once per module
    (it reads the matrices back to the host) and kept on it."""
    if rotation is None:
        return None
    if not hasattr(rotation, "_hadamard_form"):
        rotation._hadamard_form = _form(rotation)
    return rotation._hadamard_form


def _form(rotation):
    m, b = rotation.m, rotation.b
    if not rotation.shared or rotation.perm is not None or rotation.r2 is not None or b < 16 or b & (b - 1):
        return None
    if rotation.mix is not None and m > 16:  # a larger mix (Dream's 148) does not fit one program: torch mixes
        return None
    from quantizers.quarot import sylvester
    if not torch.allclose(rotation.r1[0].double().cpu(), sylvester(b) / b ** 0.5, atol=1e-3):
        return None
    return m, b, None if rotation.mix is None else rotation.mix.float()


@triton.jit
def _round_fp8(v, EMULATE: tl.constexpr):
    """v (fp32, |v| <= 448) rounded to the nearest even e4m3 value, still fp32. The GPU's cast rounds like this by
    itself; the CPU interpreter (triton 3.9) truncates, so there it is done on the bits: 3 mantissa bits for normal
    values, steps of 2^-9 below 2^-6 (the subnormals)."""
    if EMULATE:
        b = v.to(tl.uint32, bitcast=True)
        normal = ((b + 0x7FFFF + ((b >> 20) & 1)) & 0xFFF00000).to(tl.float32, bitcast=True)
        sub = (v + 24576.0) - 24576.0  # 1.5 * 2^14: adding it leaves a multiple of 2^-9, rounded to nearest even
        v = tl.where(tl.abs(v) < 0.015625, sub, normal)
    return v


@triton.jit
def _rint(v):
    """Round to the nearest integer, ties to even, as torch.round: floor(v + 0.5), then a tie that landed on an odd
    number goes down (exact for |v| < 2^22). The shorter (v + 1.5 * 2^23) - 1.5 * 2^23 gave codes one off on the
    H100 (triton 3.6), though it is right in the interpreter."""
    r = tl.floor(v + 0.5)
    return tl.where((r - v == 0.5) & (tl.floor(r * 0.5) * 2 != r), r - 1.0, r)


@triton.jit
def _quant(x_ptr, mix_ptr, q_ptr, s_ptr, M_BLOCKS, K, stride_xm, stride_qm, clip, QMAX: tl.constexpr,
           FMT: tl.constexpr, ROWS: tl.constexpr, B: tl.constexpr, LOG_B: tl.constexpr, MIX: tl.constexpr,
           EMULATE: tl.constexpr):
    """QuaRot's rotation, then the codes. One token per program, held as a (ROWS, B) tile: channel k at (k // B,
    k % B); rows past K are zeros."""
    tok = tl.program_id(0)
    i, j = tl.arange(0, ROWS), tl.arange(0, B)
    k = i[:, None] * B + j[None, :]
    x = tl.load(x_ptr + tok * stride_xm + k, mask=k < K, other=0.0).to(tl.float32)
    for _ in tl.static_range(LOG_B):  # x H_b on every row: Pease's FWHT, each round y = [x_even + x_odd, x_even -
        a, b = tl.split(tl.reshape(x, (ROWS, B // 2, 2)))  # x_odd]
        x = tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 2, 1)), (ROWS, B))
    x = x * (1.0 / tl.sqrt(B * 1.0))
    if MIX:  # y_n = sum_m mix[m, n] x_m: mix^T (ROWS, ROWS) @ x, zero-padded past the m blocks
        mt = tl.load(mix_ptr + i[None, :] * M_BLOCKS + i[:, None],
                     mask=(i[:, None] < M_BLOCKS) & (i[None, :] < M_BLOCKS), other=0.0)
        x = tl.dot(mt, x, input_precision="ieee")
    s = tl.max(tl.max(tl.abs(x), 1), 0) * clip / QMAX
    s = tl.where(s > 0, s, 1.0)
    tl.store(s_ptr + tok, s)
    _encode(tl.math.div_rn(x, s), q_ptr + tok * stride_qm, k, k < K, 0, tl.cdiv(K, 32) * 4, FMT, ROWS * B, EMULATE)


@triton.jit
def _quant_rows(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm, clip, QMAX: tl.constexpr, FMT: tl.constexpr,
                BLOCK: tl.constexpr, EMULATE: tl.constexpr):
    """One token per program, BLOCK channels at a time, without a rotation: one pass for max|x|, a second that
    encodes (the same bytes moments later, which L2 should still hold). A whole token in registers, as _quant holds
    it for the FWHT, pads K = 12288 to 16384 lanes and 18944 to 32768; on the H100 this kernel is 1.4-2.8x faster
    at those widths, up to 12% slower at K <= 4096 (results/wa_gemm_h100.md)."""
    tok = tl.program_id(0)
    x_row = x_ptr + tok * stride_xm
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        amax = tl.maximum(amax, tl.abs(tl.load(x_row + k, mask=k < K, other=0.0).to(tl.float32)))
    s = tl.max(amax, 0) * clip / QMAX
    s = tl.where(s > 0, s, 1.0)
    tl.store(s_ptr + tok, s)
    for k0 in range(0, K, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        v = tl.math.div_rn(tl.load(x_row + k, mask=k < K, other=0.0).to(tl.float32), s)
        _encode(v, q_ptr + tok * stride_qm, k, k < K, k0 // 8, tl.cdiv(K, 32) * 4, FMT, BLOCK, EMULATE)


@triton.jit
def _encode(v, q_row, k, ok, word0, n_words, FMT: tl.constexpr, NUMEL: tl.constexpr, EMULATE: tl.constexpr):
    """Store v = x / s (any tile shape; k its channels, row-major) as codes of the format at q_row. int4: codes
    v + 8, eight to a word (code j of a word at bits 4j .. 4j + 3), the tile's words from word0 on; past K code 0,
    as core.pack pads."""
    if FMT == 0:  # correctly rounded division above, as torch; the GPU's default fp32 division is approximate
        v = _round_fp8(tl.minimum(tl.maximum(v, -448.0), 448.0), EMULATE)
        tl.store(q_row + k, v.to(tl.float8e4nv), mask=ok)
    else:
        v = _rint(v)
        if FMT == 1:
            tl.store(q_row + k, tl.minimum(tl.maximum(v, -128.0), 127.0).to(tl.int8), mask=ok)
        else:
            c = tl.where(ok, (tl.minimum(tl.maximum(v, -8.0), 7.0) + 8.0).to(tl.int32), 0)
            c = tl.reshape(c, (NUMEL // 8, 8)) << (tl.arange(0, 8) * 4)[None, :]
            w = tl.sum(c, 1)  # disjoint bits: the sum is the OR
            r = word0 + tl.arange(0, NUMEL // 8)
            tl.store(q_row + r, w, mask=r < n_words)


CHUNK, WARPS = 2048, 8  # _quant_rows: channels per step, warps per token


def quantize(x, fmt, clip=1.0, rotation=None):
    """x (..., K) bf16/fp16/fp32 -> (codes, scales) as `reference` defines them, by one Triton kernel per call.
    rotation: a core.Rotation applied first; QuaRot's Hadamard (hadamard_form) is fused into the kernel, any other
    is applied by torch before it, in x's dtype."""
    K = x.shape[-1]
    if fmt not in FMT:
        raise ValueError(f"act_quant: format {fmt!r} is not one of {', '.join(FMT)}")
    x2 = x.reshape(-1, K)
    form = hadamard_form(rotation)
    if rotation is not None and form is None:  # in x's dtype: cuBLAS, where fp32 would run 10x slower
        x2 = rotation(x2)
    x2 = x2 if x2.stride(1) == 1 else x2.contiguous()
    M = x2.shape[0]
    dtype = {"fp8": torch.float8_e4m3fn, "int8": torch.int8, "int4": torch.int32}[fmt]
    q = torch.empty(M, -(-K // 32) * 4 if fmt == "int4" else K, device=x.device, dtype=dtype)
    s = torch.empty(M, device=x.device, dtype=torch.float32)
    if form is None:
        block = min(max(triton.next_power_of_2(K), 32), CHUNK)
        _quant_rows[(M,)](x2, q, s, K, x2.stride(0), q.stride(0), clip, QMAX=QMAX[fmt], FMT=FMT[fmt], BLOCK=block,
                          EMULATE=INTERPRET, num_warps=WARPS)
        return q, s
    m, b, mix = form  # one token is an (m, b) tile; the mix needs at least 16 rows for the tensor-core product
    rows, log_b = max(m, 16) if mix is not None else m, int(math.log2(b))
    if mix is not None and mix.device != x.device:  # move the kept matrix once, not on every call
        mix = mix.to(x.device)
        rotation._hadamard_form = (m, b, mix)
    rows = triton.next_power_of_2(rows)
    warps = 8 if rows * b >= 4096 else 4
    _quant[(M,)](x2, mix if mix is not None else s, q, s, m, K, x2.stride(0), q.stride(0), clip, QMAX=QMAX[fmt],
                 FMT=FMT[fmt], ROWS=rows, B=b, LOG_B=log_b, MIX=mix is not None, EMULATE=INTERPRET,
                 num_warps=warps)  # (s stands in for the mix pointer when there is none)
    return q, s


# ------------------------------------------------------------------------------------------ check and benchmark
def bench():
    """Check against the twin and time the quantizer with and without QuaRot's online Hadamard (GB/s moved)."""
    from triton.testing import do_bench_cudagraph

    from quantizers.quarot import online_hadamard
    print("| K | rotation | M | fmt | µs | GB/s |\n|---|---|---|---|---|---|")
    for K in (4096, 3584, 12288, 18944):
        for rot in (None, online_hadamard(K, torch.bfloat16).cuda()):
            for M in (16, 1024, 4096):
                x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
                for fmt in ("fp8", "int8", "int4"):
                    q, s = quantize(x, fmt, 1.0, rot)
                    ref_q, ref_s = reference(x, fmt, 1.0, rot)
                    d, ref_d = dequantize(q, s, fmt, K), dequantize(ref_q, ref_s, fmt, K)
                    err = ((d - ref_d).abs().max() / ref_d.abs().max()).item()
                    step = (32 if fmt == "fp8" else 1) / QMAX[fmt]  # one code (e4m3: its widest step) of max|x|
                    if err > (0.01 if rot is None else 2.01) * step:  # exact; a rotation sums in another order or, by
                        # torch in bf16 (hadamard_form None), rounds twice: up to two codes
                        raise SystemExit(f"K={K} M={M} {fmt}: differs from the twin by {err:.2e}")
                    t = do_bench_cudagraph(lambda: quantize(x, fmt, 1.0, rot)) * 1e3  # noqa: B023
                    moved = x.numel() * 2 + q.numel() * q.element_size() + 4 * M
                    name = "none" if rot is None else f"H{rot.m} x H{rot.b}"
                    print(f"| {K} | {name} | {M} | {fmt} | {t:.1f} | {moved / t / 1e3:.0f} |", flush=True)


if __name__ == "__main__":
    bench()
