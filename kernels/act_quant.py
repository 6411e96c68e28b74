"""
Per-token activation quantization for the W8A8, W4A8 and W4A4 GEMMs (kernels/wa_gemm.py), with QuaRot's online Hadamard
rotation optionally applied in the same pass.

Format (`reference` below is the pure-torch twin that defines it). Each token (row) x of X (M, K) gets one scale
  s = max|x| * clip / QMAX   (1 where the row is all zeros)
and its values v = x / s become
  fp8   e4m3 (QMAX 448), round to nearest even, saturated: (M, K) torch.float8_e4m3fn;
  int8  clamp(round(v), -128, 127) (QMAX 127): (M, K) int8;
  int4  clamp(round(v), -8, 7) (QMAX 7), stored as codes v + 8 packed by quantizers/format.pack (8 to an int32
        word, code j in bits 4j .. 4j + 3, chunks of 32 channels padded with code 0): (M, ceil(K / 32) * 4) int32.
The integer formats also give each token's sum of its values, sum_k v_k, (M,) int32: the GEMM's zero-point
correction needs it (kernels/wa_gemm.py), and it costs nothing here, where the values are made. The integer grids
are exactly format.quantize_tokens' symmetric grid, so a dequantized int8 / int4 output equals the fake quantization
the torch model applies. Scales are (M,) float32.

How the work is laid out (a Triton program is one thread block; it handles a tile of the data in registers):
  _quant_rows      one program per token, no rotation. It reads the token in chunks of CHUNK channels twice: a
                   first pass for max|x|, a second that scales, rounds and stores the codes (the chunk is still in
                   L2 by then). int4 codes of 8 neighbouring channels are shifted into one word as they are stored.
  _rotate_quant    QuaRot's rotation x -> x (H_m (x) H_b) / sqrt(m b), for TOKENS tokens per program, as two
                   tensor-core products per token. With H_b = H_(b/C) (x) H_C, a token of K = R C channels is an
                   (R, C) tile X (C <= 128; LLaDA-8B's 12288: R = 96, Dream-7B's 18944: R = 148), and
                   x H = B^T X H_C with B = H_m (x) H_(b/C) (R, R). The program holds X transposed, X^T (C, R), so
                   Z^T = H_C X^T is the first product and Z^T B the second, whose left operand stays in registers.
                   Every matrix holds +-1, exact in bf16; 1 / sqrt(m b) is applied last. Z is rounded to bf16 for the
                   second product (the twin rounds it too): against an exact rotation that moves a few percent of
                   the codes one step, fewer than torch's own rotation of bf16 x (tests/test_wa_kernels.py). Rows
                   past a power of two (148 = 128 + 20) go in a second tile padded to 32.
Any other rotation (DuQuant's, blocks under 16 channels) is applied by torch before this kernel (quantizers/core.py
decides); `fused_form` says which rotations the fused kernel takes.

    python -m kernels.act_quant         # on a GPU: check against the twin, then time with and without the rotation
"""
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from kernels.shims import INTERPRET, dot, rint, round_bf16, round_fp8, time_in_graph
from quantizers.format import pack, unpack
from quantizers.hadamard import hadamard_factors, sylvester

QMAX = {"fp8": 448.0, "int8": 127.0, "int4": 7.0}
FMT = {"fp8": 0, "int8": 1, "int4": 2}


class Form(NamedTuple):
    """A rotation as _rotate_quant takes it: a token is an (R, C) tile, R = R0 (+ R1P padded rows); x -> B^T X H_C
    times norm. H (C, C) and B (R0 + R1P, R0 + R1P) hold +-1 in bf16."""
    C: int
    R0: int
    R1P: int
    norm: float
    H: torch.Tensor
    B: torch.Tensor

    def to(self, device):
        return self._replace(H=self.H.to(device), B=self.B.to(device))


def reference(x, fmt, clip=1.0, form=None):
    """The pure-torch twin: x (..., K) -> (codes, scales (M,) float32, sums (M,) int32 or None for fp8), M the
    number of tokens. With a form, x is rotated first as the kernel does it (above)."""
    x = x.reshape(-1, x.shape[-1]).float()
    if form is not None:
        R = x.shape[1] // form.C
        z = (x.view(-1, R, form.C) @ form.H.to(x.device).float()).bfloat16().float()  # X H_C, rounded as the kernel
        x = (form.B[:R, :R].to(x.device).float().T @ z).view(x.shape) * form.norm
    s = x.abs().amax(-1) * clip / QMAX[fmt]
    s = torch.where(s > 0, s, 1.0)
    v = x / s[:, None]
    if fmt == "fp8":
        return v.clamp(-448, 448).to(torch.float8_e4m3fn), s, None
    lo = -8 if fmt == "int4" else -128
    q = torch.clamp(torch.round(v), lo, -lo - 1)
    sums = q.sum(-1, dtype=torch.int32)  # (float ints summed as int32: exact, whatever the order)
    if fmt == "int4":
        return pack((q + 8).to(torch.uint8), 4), s, sums
    return q.to(torch.int8), s, sums


def dequantize(q, s, fmt, K):
    """codes and scales -> the float32 values (M, K) they stand for."""
    if fmt == "int4":
        q = unpack(q, 4, K).float() - 8
    return q.float() * s[:, None]


def fused_form(r1, m, mix=None):
    """The Form of the rotation of m blocks of b channels, x -> blockdiag(r1, .., r1) then the mix across blocks
    (y_n = sum_m mix[m, n] y_m), when it is QuaRot's H_m (x) H_b or its head mix H_m (x) I_b: r1 (b, b) a constant
    times Sylvester's H_b or the identity (b >= 16 a power of two), mix (m, m) +-1 times a constant (None: no mix).
    None for any other rotation. Reads the matrices back to the host."""
    b = len(r1)
    if b < 16 or b & (b - 1):
        return None
    r1 = r1.double().cpu()
    mix = torch.eye(m, dtype=torch.float64) if mix is None else mix.double().cpu()
    c1, c2 = r1[0, 0].item(), mix.abs().max().item()
    pm = (mix / c2).round()
    inner = sylvester if torch.equal(r1, c1 * sylvester(b)) else identity if torch.equal(r1, c1 * identity(b)) else None
    if inner is None or not torch.equal(pm * c2, mix):
        return None
    C = min(b, 128)  # a token is an (R, C) tile of R = m b / C rows, at least 16 (the tensor cores' smallest side)
    while C > 16 and m * b // C < 16:
        C //= 2
    R = m * b // C
    R0 = 1 << (R.bit_length() - 1)  # rows split as a power of two and the rest, padded: 148 = 128 + 20 (-> 32)
    R1P = 0 if R == R0 else max(triton.next_power_of_2(R - R0), 16)
    if R < 16 or R0 + R1P > 256:  # past 256 rows the tile outgrows one program's registers
        return None
    B = torch.zeros(R0 + R1P, R0 + R1P, dtype=torch.float64)
    B[:R, :R] = torch.kron(pm, inner(b // C))  # H_b = H_(b/C) (x) H_C: the first factor joins the mix
    return Form(C, R0, R1P, c1 * c2, inner(C).bfloat16(), B.bfloat16())


def identity(n):
    return torch.eye(n, dtype=torch.float64)


def hadamard_form(n):
    """The Form of QuaRot's online rotation of width n (H_m (x) H_b / sqrt(n), as quantizers/quarot.py builds it),
    or None when the fused kernel does not take that width."""
    factors = hadamard_factors(n)
    if factors is None:
        return None
    A, B = factors
    return fused_form(B / len(B) ** 0.5, len(A), A / len(A) ** 0.5 if len(A) > 1 else None)


@triton.jit
def _rotate_quant(x_ptr, h_ptr, b_ptr, q_ptr, s_ptr, sum_ptr, M, K, stride_xm, stride_qm, norm, clip, M_BUCKET,
                  QMAX: tl.constexpr, FMT: tl.constexpr, C: tl.constexpr, R0: tl.constexpr, R1P: tl.constexpr,
                  X_F32: tl.constexpr, EMULATE: tl.constexpr, TOKENS: tl.constexpr):
    """QuaRot's rotation, then the codes, for TOKENS tokens per program. A token is held transposed, X^T (C, R):
    channel r C + c at [c, r], rows R0 .. R0 + R1P in a second tile (zeros past K). Z^T = H_C X^T (rounded to
    bf16), then Y^T = Z^T B; each tile of Y^T sums the products with both tiles of Z^T."""
    c, i0 = tl.arange(0, C), tl.arange(0, R0)
    h = tl.load(h_ptr + c[:, None] * C + c[None, :])  # the +-1 matrices, read once per program
    b00 = tl.load(b_ptr + i0[:, None] * (R0 + R1P) + i0[None, :])
    kt0, k0 = i0[None, :] * C + c[:, None], i0[:, None] * C + c[None, :]  # channels of the (C, R0) and (R0, C) tiles
    if R1P > 0:
        i1 = tl.arange(0, R1P)
        b01 = tl.load(b_ptr + i0[:, None] * (R0 + R1P) + R0 + i1[None, :])
        b10 = tl.load(b_ptr + (R0 + i1[:, None]) * (R0 + R1P) + i0[None, :])
        b11 = tl.load(b_ptr + (R0 + i1[:, None]) * (R0 + R1P) + R0 + i1[None, :])
        kt1, k1 = (R0 + i1[None, :]) * C + c[:, None], (R0 + i1[:, None]) * C + c[None, :]
    for t in range(TOKENS):
        tok = tl.program_id(0) * TOKENS + t
        lim = tl.where(tok < M, K, 0)  # past the last token nothing is read or written
        x_row, q_row = x_ptr + tok * stride_xm, q_ptr + tok * stride_qm
        z0 = _hx(h, tl.load(x_row + kt0, mask=kt0 < lim, other=0.0), X_F32, EMULATE)
        y0 = dot(z0, b00, None, EMULATE)
        amax = tl.max(tl.max(tl.abs(y0), 1), 0)
        if R1P > 0:
            z1 = _hx(h, tl.load(x_row + kt1, mask=kt1 < lim, other=0.0), X_F32, EMULATE)
            y0 = dot(z1, b10, y0, EMULATE)
            y1 = dot(z1, b11, dot(z0, b01, None, EMULATE), EMULATE)
            amax = tl.maximum(tl.max(tl.max(tl.abs(y0), 1), 0), tl.max(tl.max(tl.abs(y1), 1), 0))
        s = tl.where(amax > 0, amax * norm * clip / QMAX, 1.0)
        tl.store(s_ptr + tok, s, mask=tok < M)
        n_words = tl.where(tok < M, tl.cdiv(K, 32) * 4, 0)  # (transposed back: the codes go out along channels)
        total = _encode(tl.trans(y0 * (norm / s)), q_row, k0, k0 < lim, 0, n_words, FMT, R0 * C, EMULATE)
        if R1P > 0:
            total += _encode(tl.trans(y1 * (norm / s)), q_row, k1, k1 < lim, R0 * C // 8, n_words, FMT, R1P * C,
                             EMULATE)
        if FMT != 0:
            tl.store(sum_ptr + tok, total, mask=tok < M)


@triton.jit
def _hx(h, xt, X_F32: tl.constexpr, EMULATE: tl.constexpr):
    """H_C X^T in bf16: exact products of +-1 with bf16 / fp16 x summed in fp32 (fp32 x: fp32 FMAs), then rounded to
    nearest even (under the interpreter on the bits first: shims.round_bf16)."""
    if X_F32:
        z = tl.dot(h.to(tl.float32), xt, input_precision="ieee")
    else:
        z = dot(h.to(xt.dtype), xt, None, EMULATE)
    if EMULATE:
        z = round_bf16(z)
    return z.to(tl.bfloat16)


@triton.jit
def _quant_rows(x_ptr, q_ptr, s_ptr, sum_ptr, K, stride_xm, stride_qm, clip, QMAX: tl.constexpr, FMT: tl.constexpr,
                BLOCK: tl.constexpr, EMULATE: tl.constexpr):
    """One token per program, BLOCK channels at a time, without a rotation: one pass for max|x|, a second that
    encodes (the same bytes moments later, which L2 should still hold)."""
    tok = tl.program_id(0)
    x_row = x_ptr + tok * stride_xm
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        amax = tl.maximum(amax, tl.abs(tl.load(x_row + k, mask=k < K, other=0.0).to(tl.float32)))
    s = tl.max(amax, 0) * clip / QMAX
    s = tl.where(s > 0, s, 1.0)
    tl.store(s_ptr + tok, s)
    total = 0
    for k0 in range(0, K, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        v = tl.math.div_rn(tl.load(x_row + k, mask=k < K, other=0.0).to(tl.float32), s)
        total += _encode(v, q_ptr + tok * stride_qm, k, k < K, k0 // 8, tl.cdiv(K, 32) * 4, FMT, BLOCK, EMULATE)
    if FMT != 0:
        tl.store(sum_ptr + tok, total)


@triton.jit
def _encode(v, q_row, k, ok, word0, n_words, FMT: tl.constexpr, NUMEL: tl.constexpr, EMULATE: tl.constexpr):
    """Store v = x / s (any tile shape; k its channels, row-major) as codes of the format at q_row; return the sum of
    the integer values (0 for fp8). int4: codes v + 8, eight to a word (code j of a word at bits 4j .. 4j + 3), the
    tile's words from word0 on; past K code 0, as format.pack pads (v there is 0: x was read as 0)."""
    if FMT == 0:  # correctly rounded division above, as torch; the GPU's default fp32 division is approximate
        v = round_fp8(tl.minimum(tl.maximum(v, -448.0), 448.0), EMULATE)
        tl.store(q_row + k, v.to(tl.float8e4nv), mask=ok)
        total = 0
    else:
        lo = -8 if FMT == 2 else -128
        v = tl.minimum(tl.maximum(rint(v, EMULATE), lo), -lo - 1)
        if FMT == 1:
            tl.store(q_row + k, v.to(tl.int8), mask=ok)
        else:
            c = tl.reshape(tl.where(ok, v + 8, 0), (NUMEL // 8, 8)) << (tl.arange(0, 8) * 4)[None, :]
            r = word0 + tl.arange(0, NUMEL // 8)
            tl.store(q_row + r, tl.sum(c, 1), mask=r < n_words)  # disjoint bits: the sum is the OR
        total = tl.sum(tl.reshape(v, (NUMEL,)), 0)
    return total


CHUNK, WARPS = 2048, 8  # _quant_rows: channels per step, warps per token
CONFIGS = [triton.Config({"TOKENS": t}, num_warps=w, num_stages=st)  # _rotate_quant: (tokens per program, warps,
           for t, w, st in ((2, 4, 2), (4, 4, 2), (4, 8, 2), (8, 8, 3), (4, 8, 3), (2, 8, 3), (8, 4, 2), (1, 8, 1))]
# stages), each the H100 autotuner's choice at some width and token count (results/kernels-h100); one stage fits
# fp32 x at Dream's 18944. The autotuner times them in a CUDA graph, as a model step runs them.


_tuned = triton.autotune(CONFIGS, key=["M_BUCKET", "K", "FMT"], do_bench=time_in_graph)(_rotate_quant)


def quantize(x, fmt, clip=1.0, form=None, config=None):
    """x (..., K) bf16/fp16/fp32 -> (codes, scales, sums) as `reference` defines them, by one Triton kernel.
    form: a Form (fused_form) to rotate x by first, in the same kernel. config: one of CONFIGS for the fused
    rotation instead of the autotuned one (the tests run each; the interpreter cannot time)."""
    K = x.shape[-1]
    if fmt not in FMT:
        raise ValueError(f"act_quant: format {fmt!r} is not one of {', '.join(FMT)}")
    x2 = x.reshape(-1, K)
    x2 = x2 if x2.stride(1) == 1 else x2.contiguous()
    M = x2.shape[0]
    dtype = {"fp8": torch.float8_e4m3fn, "int8": torch.int8, "int4": torch.int32}[fmt]
    q = torch.empty(M, -(-K // 32) * 4 if fmt == "int4" else K, device=x.device, dtype=dtype)
    s = torch.empty(M, device=x.device, dtype=torch.float32)
    sums = torch.empty(M, device=x.device, dtype=torch.int32)  # (fp8 leaves them unwritten and returns None)
    out = q, s, None if fmt == "fp8" else sums
    if form is None:
        block = min(max(triton.next_power_of_2(K), 32), CHUNK)
        _quant_rows[(M,)](x2, q, s, sums, K, x2.stride(0), q.stride(0), clip, QMAX=QMAX[fmt], FMT=FMT[fmt], BLOCK=block,
                          EMULATE=INTERPRET, num_warps=WARPS)
        return out
    if form.H.device != x.device:
        form = form.to(x.device)
    args = (x2, form.H, form.B, q, s, sums, M, K, x2.stride(0), q.stride(0), form.norm, clip,
            triton.next_power_of_2(M))
    flags = dict(QMAX=QMAX[fmt], FMT=FMT[fmt], C=form.C, R0=form.R0, R1P=form.R1P,
                 X_F32=x2.dtype == torch.float32, EMULATE=INTERPRET)
    config = CONFIGS[0] if config is None and INTERPRET else config
    if config is None:
        _tuned[lambda meta: (triton.cdiv(M, meta["TOKENS"]),)](*args, **flags)
    else:
        _rotate_quant[(triton.cdiv(M, config.kwargs["TOKENS"]),)](*args, **flags, **config.kwargs,
                                                                   num_warps=config.num_warps,
                                                                   num_stages=config.num_stages)
    return out


# ------------------------------------------------------------------------------------------ check and benchmark
def bench():
    """Check against the twin and time the quantizer with and without QuaRot's online Hadamard (GB/s moved)."""
    from triton.testing import do_bench_cudagraph
    print("| K | rotation | M | fmt | µs | GB/s |\n|---|---|---|---|---|---|")
    for K in (4096, 3584, 12288, 18944):
        for form in (None, hadamard_form(K).to("cuda")):
            for M in (16, 1024, 4096):
                x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
                for fmt in ("fp8", "int8", "int4"):
                    q, s, _ = quantize(x, fmt, 1.0, form)
                    ref_q, ref_s, _ = reference(x, fmt, 1.0, form)
                    d, ref_d = dequantize(q, s, fmt, K), dequantize(ref_q, ref_s, fmt, K)
                    err = ((d - ref_d).abs().max() / ref_d.abs().max()).item()
                    step = (32 if fmt == "fp8" else 1) / QMAX[fmt]  # one code (e4m3: its widest step) of max|x|
                    if err > (0.01 if form is None else 2.01) * step:  # exact; the rotation's fp32 sums in another
                        raise SystemExit(f"K={K} M={M} {fmt}: differs from the twin by {err:.2e}")  # order: codes
                    t = do_bench_cudagraph(lambda: quantize(x, fmt, 1.0, form)) * 1e3  # noqa: B023
                    moved = x.numel() * 2 + q.numel() * q.element_size() + 4 * M
                    name = "none" if form is None else "H{} x H{}".format(*map(len, hadamard_factors(K)))
                    print(f"| {K} | {name} | {M} | {fmt} | {t:.1f} | {moved / t / 1e3:.0f} |", flush=True)


if __name__ == "__main__":
    bench()
