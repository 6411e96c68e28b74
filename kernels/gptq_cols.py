"""
GPTQ's column loop (quantizers/gptq.py; Frantar et al. 2022, Algorithm 1) over one block of up to 128 columns, in one
kernel launch instead of about ten small torch launches per column.

For each column i of the block, in order: q = clamp(round(w_i / s) + z, lo, 2^bits - 1) with the grid (s, z) of the
column's group, e = (w_i - (q - z) s) / U_ii, then w_j -= e U_ij for the columns j >= i of the block (U: the upper
Cholesky factor of H^-1; the columns after the block are updated afterwards by one GEMM, in gptq.py). Every step acts
on each row of W alone, so the rows are independent: a program owns BLOCK_R rows, holds their block of columns in
registers as float32 and walks the columns; column i is read out of the register tile by a masked sum (one non-zero
term: exact). Only blocks whose group grids are all known at the block's start come here (groups a multiple of the
block wide, or act_order's static groups); gptq.py's own loop, which this kernel must match, handles the rest and is
its twin. Outputs: the codes (N, width) uint8 and the scaled errors e (N, width) float32. Results agree with the twin
up to the rounding of w - e u (the GPU may fuse it into one multiply-add).
"""
import torch
import triton
import triton.language as tl

from kernels.shims import INTERPRET, rint

BLOCK_R = 16  # rows per program: 16 x 128 float32 is 16 registers a thread at 4 warps


@triton.jit
def _gptq_cols(w_ptr, u_ptr, s_ptr, z_ptr, g_ptr, q_ptr, e_ptr, N, WIDTH, stride_w, stride_u, stride_s, stride_q,
               stride_e, MINQ, MAXQ, B: tl.constexpr, BLOCK_R: tl.constexpr, EMULATE: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, B)
    r_ok, c_ok = rows < N, cols < WIDTH
    w = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :], mask=r_ok[:, None] & c_ok[None, :], other=0.0)
    for i in range(WIDTH):
        col = tl.sum(tl.where(cols[None, :] == i, w, 0.0), 1)
        g = tl.load(g_ptr + i)
        s = tl.load(s_ptr + rows * stride_s + g, mask=r_ok, other=1.0)
        z = tl.load(z_ptr + rows * stride_s + g, mask=r_ok, other=0.0)
        q = tl.minimum(tl.maximum(rint(col / s, EMULATE).to(tl.float32) + z, MINQ), MAXQ)
        tl.store(q_ptr + rows * stride_q + i, q.to(tl.uint8), mask=r_ok)
        e = (col - (q - z) * s) / tl.load(u_ptr + i * stride_u + i)
        tl.store(e_ptr + rows * stride_e + i, e, mask=r_ok)
        u = tl.load(u_ptr + i * stride_u + cols, mask=c_ok & (cols >= i), other=0.0)
        w -= e[:, None] * u[None, :]


def columns(W1, U1, S, Z, groups, bits, lo=0):
    """W1 (N, width <= 128) float32, the block's columns as updated so far; U1 (width, width) its part of U; S, Z
    (N, G) float32 grids; groups (width,) int32, each column's group; lo the lowest code -> codes (N, width) uint8,
    errors (N, width)."""
    N, width = W1.shape
    if width > 128 or W1.dtype != torch.float32 or S.dtype != torch.float32:
        raise ValueError(f"gptq_cols: a block of at most 128 float32 columns with float32 grids, not {width} "
                         f"{W1.dtype} / {S.dtype}")
    W1, U1, S, Z = W1.contiguous(), U1.contiguous(), S.contiguous(), Z.contiguous()
    Q = torch.empty(N, width, dtype=torch.uint8, device=W1.device)
    E = torch.empty(N, width, dtype=torch.float32, device=W1.device)
    _gptq_cols[(triton.cdiv(N, BLOCK_R),)](W1, U1, S, Z, groups, Q, E, N, width, W1.stride(0), U1.stride(0),
                                           S.stride(0), Q.stride(0), E.stride(0), float(lo), float(2 ** bits - 1),
                                           B=triton.next_power_of_2(width), BLOCK_R=BLOCK_R, EMULATE=INTERPRET,
                                           num_warps=4)
    return Q, E
