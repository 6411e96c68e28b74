"""
Few-token W4A16 GEMM by group factoring: the M <= 64 path of kernels/wq_gemm.py for 4-bit codes (same format).

With few tokens a weight-only layer is bound by reading its codes, so the fewer instructions per weight the better.
Two identities leave each weight with a shift, a mask and an OR:
  1. A code becomes a float without a conversion. OR'ed into the bits of 128.0 in bf16 (0x4300), a 4-bit q fills
     the low mantissa bits, and the 16 bits read as bf16 are exactly 128 + q (in fp16: 0x6400 | q = 1024 + q). The
     trick is FasterTransformer's (Kim et al., arXiv:2211.10017, §5.2).
  2. Scale s and zero z are constant over a group, so for a chunk C of inputs inside one group and a token m
         sum_{k in C} (q_k - z) s x_mk = s (sum_{k in C} (128 + q_k) x_mk - (z + 128) sum_{k in C} x_mk):
     the first sum is a tensor-core product of the raw (128 + q) tile, the second a row sum of x, and the float
     arithmetic (one multiply-add per output) runs once per chunk, not once per weight.
Chunks are 128 inputs (16 words of 8 codes), or 64 / 32 when the group is. Products are exact and summed in fp32;
unlike the twin, weights are not rounded to the activation dtype first (tests: within 5e-3 of max |y| in bf16).
Two ways to meet the chunk's x, both autotune candidates since neither wins on every layer (on one H100):
  SHIFTS   codes j, 8 + j, 16 + j, ... (shift j of each word) form one (BLOCK_N, 16) tile: 8 products per chunk
           against x read at stride 8, no shuffling of registers (128-input chunks only);
  natural  the (BLOCK_N, 16, 8) codes reshaped to (BLOCK_N, 128) in input order: one product with contiguous x.
K is split over 2 to 8 programs whose fp32 partial sums are added atomically, as in wq_gemm's fused path.
"""
import torch
import triton
import triton.language as tl

from kernels.shims import INTERPRET, dot, grid


def chunk_of(bits, K, G, dtype):
    """The chunk (inputs per scale step) this kernel uses for a layer, or None if it does not take the layer."""
    group = K // G
    if bits != 4 or dtype not in (torch.bfloat16, torch.float16) or group * G != K:
        return None
    return next((c for c in (128, 64, 32) if group % c == 0), None)


@triton.jit
def _factored(x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr, M, N, K, GROUP, stride_xm, stride_qn, stride_sn, stride_ym, M_BUCKET,
              CHUNK: tl.constexpr, MAGIC: tl.constexpr, OFFSET: tl.constexpr, DOT_F32: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, SPLIT_K: tl.constexpr, SHIFTS: tl.constexpr):
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_ok, m_ok = rn < N, rm < M
    rw = tl.arange(0, CHUNK // 8)  # the chunk's words
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    chunks = K // CHUNK
    per = tl.cdiv(chunks, SPLIT_K)
    for c in range(pid_k * per, tl.minimum((pid_k + 1) * per, chunks)):
        k0 = c * CHUNK
        words = tl.load(qw_ptr + rn[:, None] * stride_qn + (c * (CHUNK // 8) + rw)[None, :], mask=n_ok[:, None],
                        other=0).to(tl.uint32, bitcast=True)
        part = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # sum (128 + q) x over the chunk
        xsum = tl.zeros((BLOCK_M,), dtype=tl.float32)
        if SHIFTS:
            for j in tl.static_range(8):
                q = (((words >> (4 * j)) & 0xF) | MAGIC).to(tl.uint16).to(x_ptr.dtype.element_ty, bitcast=True)
                xj = tl.load(x_ptr + rm[None, :] * stride_xm + (k0 + 8 * rw + j)[:, None], mask=m_ok[None, :],
                             other=0.0)
                part = dot(q, xj, part, DOT_F32)
                xsum += tl.sum(xj.to(tl.float32), axis=0)
        else:
            shifts = (tl.arange(0, 8) * 4).to(tl.uint32)
            q = tl.reshape(((words[:, :, None] >> shifts[None, None, :]) & 0xF) | MAGIC, (BLOCK_N, CHUNK))
            q = q.to(tl.uint16).to(x_ptr.dtype.element_ty, bitcast=True)
            xc = tl.load(x_ptr + rm[None, :] * stride_xm + (k0 + tl.arange(0, CHUNK))[:, None], mask=m_ok[None, :],
                         other=0.0)
            part = dot(q, xc, part, DOT_F32)
            xsum = tl.sum(xc.to(tl.float32), axis=0)
        g = k0 // GROUP
        s = tl.load(s_ptr + rn * stride_sn + g, mask=n_ok, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + rn * stride_sn + g, mask=n_ok, other=0.0).to(tl.float32)
        acc += s[:, None] * (part - (z[:, None] + OFFSET) * xsum[None, :])
    tl.atomic_add(y_ptr + rm[None, :] * stride_ym + rn[:, None], acc, mask=n_ok[:, None] & m_ok[None, :])


def _configs(shifts):
    """(BLOCK_N, SPLIT_K, SHIFTS): the winners of a sweep on the H100 (BLOCK_N 64 / 128 / 256 x SPLIT_K 1 / 2 / 4 / 8,
    both ways, M = 1 and 16, the seven LLaDA / Dream shapes); natural order only for chunks of 32 or 64."""
    shapes = [(128, 8, 1), (128, 4, 1), (64, 8, 0), (64, 8, 1)] if shifts else [(64, 8, 0), (128, 8, 0), (64, 4, 0),
                                                                                (64, 2, 0)]
    return [triton.Config({"BLOCK_N": n, "BLOCK_M": 16, "SPLIT_K": k, "SHIFTS": s}, num_warps=4, num_stages=4)
            for n, k, s in shapes]


CONFIGS = {128: _configs(True), 64: _configs(False), 32: _configs(False)}  # by chunk
KEY = ["M_BUCKET", "N", "K", "GROUP"]
_tuned = {c: triton.autotune(CONFIGS[c], key=KEY, reset_to_zero=["y_ptr"])(_factored) for c in CONFIGS}


def matmul(x2, qweight, scales, zeros, bits, K, config=None, out=None):
    """x2 (M, K) bf16 / fp16 @ dequant(W)^T for a layer that chunk_of() takes; config: one of CONFIGS[chunk]
    instead of the autotuned one (the interpreter cannot time). out: (M, N) in x2's dtype to write into."""
    M, N, G = x2.shape[0], qweight.shape[0], scales.shape[1]
    chunk = chunk_of(bits, K, G, x2.dtype)
    if chunk is None:
        raise ValueError(f"wq_factored: a {bits}-bit layer of {K} inputs in {G} groups ({x2.dtype}) is not for this "
                         "kernel (4 bits, groups a multiple of 32, bf16 or fp16)")
    config = CONFIGS[chunk][0] if config is None and INTERPRET else config
    y = torch.zeros(M, N, device=x2.device, dtype=torch.float32)  # the split-K programs' sums add up here
    bf16 = x2.dtype == torch.bfloat16
    args = (x2, qweight, scales, zeros, y, M, N, K, K // G, x2.stride(0), qweight.stride(0), G, y.stride(0),
            triton.next_power_of_2(M))
    flags = dict(CHUNK=chunk, MAGIC=0x4300 if bf16 else 0x6400, OFFSET=128.0 if bf16 else 1024.0,
                 DOT_F32=INTERPRET)
    if config is None:
        _tuned[chunk][lambda meta: grid(M, N, meta)](*args, **flags)
    else:
        _factored[grid(M, N, config.kwargs)](*args, **flags, **config.kwargs, num_warps=config.num_warps,
                                              num_stages=config.num_stages)
    return out.copy_(y) if out is not None else y.to(x2.dtype)
