"""
Quant-dLLM's column loop (quantizers/quantdllm.py, round_columns: GPTQ's compensation on the DAQ grid) over one group
of up to 128 columns, in one kernel launch instead of about a dozen small torch launches per column.

The DAQ fit gives each weight (n, j) of the group K magnitudes a_k = a_r[k, n] a_c[k, j], and so a grid of 2^K points
sum_k s_k a_k, one per sign pattern s in {-1, +1}^K. For each column j, in order: every weight takes the nearest point
(ties to the first pattern, as torch.argmin), e = (w - point) / U_jj, and the later columns of the group absorb it,
w_l -= e U_jl (U: the upper Cholesky factor of H^-1). As in kernels/gptq_cols.py each row is independent: a program
owns BLOCK_R rows, holds their columns in registers as float32, walks the columns and reads column j out of the tile
by a masked sum (one non-zero term: exact). Pattern p is the p-th row of quantdllm.sign_patterns: the sign of order k
is + where bit K-1-k of p is set. Each point is summed order by order, as the twin's small matmul sums it. Outputs:
the signs (K, N, width) float32 in {-1, +1} and the scaled errors (N, width) float32; they agree with the twin up to
the rounding of w - e u (the GPU may fuse it into one multiply-add), which can flip a weight that sits on a tie.
"""
import torch
import triton
import triton.language as tl

BLOCK_R = 16  # rows per program: 16 x 128 float32 is 16 registers a thread at 4 warps


@triton.jit
def _binary_cols(w_ptr, u_ptr, ar_ptr, ac_ptr, b_ptr, e_ptr, N, WIDTH, stride_w, stride_u, stride_ar, stride_ac,
                 stride_bk, stride_bn, stride_e, K: tl.constexpr, B: tl.constexpr, BLOCK_R: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, B)
    r_ok, c_ok = rows < N, cols < WIDTH
    w = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :], mask=r_ok[:, None] & c_ok[None, :], other=0.0)
    for j in range(WIDTH):
        col = tl.sum(tl.where(cols[None, :] == j, w, 0.0), 1)
        best_d = tl.full((BLOCK_R,), float("inf"), tl.float32)
        best_point = tl.zeros((BLOCK_R,), tl.float32)
        best = tl.zeros((BLOCK_R,), tl.int32)
        for p in tl.static_range(2 ** K):
            point = tl.zeros((BLOCK_R,), tl.float32)
            for k in tl.static_range(K):
                a = tl.load(ar_ptr + k * stride_ar + rows, mask=r_ok, other=0.0) * tl.load(ac_ptr + k * stride_ac + j)
                if (p >> (K - 1 - k)) & 1:
                    point += a
                else:
                    point -= a
            d = tl.abs(point - col)
            nearer = d < best_d  # strict: a tie keeps the earlier pattern
            best_d = tl.where(nearer, d, best_d)
            best_point = tl.where(nearer, point, best_point)
            best = tl.where(nearer, p, best)
        for k in tl.static_range(K):
            sign = tl.where(((best >> (K - 1 - k)) & 1) == 1, 1.0, -1.0)
            tl.store(b_ptr + k * stride_bk + rows * stride_bn + j, sign, mask=r_ok)
        e = (col - best_point) / tl.load(u_ptr + j * stride_u + j)
        tl.store(e_ptr + rows * stride_e + j, e, mask=r_ok)
        u = tl.load(u_ptr + j * stride_u + cols, mask=c_ok & (cols >= j), other=0.0)
        w -= e[:, None] * u[None, :]


def columns(W1, ar, ac, U1):
    """W1 (N, width <= 128) float32, the group's columns as updated so far; ar (K, N), ac (K, width) the DAQ
    magnitudes; U1 (width, width) the group's part of U -> signs (K, N, width), errors (N, width), both float32."""
    N, width = W1.shape
    if width > 128 or not W1.dtype == ar.dtype == ac.dtype == U1.dtype == torch.float32:
        raise ValueError(f"binary_cols: a group of at most 128 float32 columns with float32 scales, not {width} "
                         f"{W1.dtype} / {ar.dtype} / {ac.dtype} / {U1.dtype}")
    W1, U1, ar, ac = W1.contiguous(), U1.contiguous(), ar.contiguous(), ac.contiguous()
    K = len(ar)
    S = torch.empty(K, N, width, dtype=torch.float32, device=W1.device)
    E = torch.empty(N, width, dtype=torch.float32, device=W1.device)
    _binary_cols[(triton.cdiv(N, BLOCK_R),)](W1, U1, ar, ac, S, E, N, width, W1.stride(0), U1.stride(0),
                                             ar.stride(0), ac.stride(0), S.stride(0), S.stride(1), E.stride(0), K=K,
                                             B=triton.next_power_of_2(width), BLOCK_R=BLOCK_R, num_warps=4)
    return S, E
