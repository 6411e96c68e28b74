"""
GPTQ (Frantar et al. 2022, arXiv:2210.17323), Algorithm 1 with lazy batch updates. A Linear's weight is rounded one
input column at a time, and each column's rounding error is spread over the columns not yet rounded, weighted by
the inverse of H = sum_j x_j x_j^T, the Gram matrix of the layer's calibration inputs. Blocks are visited in order
and each block is calibrated on the outputs of the already-quantized blocks before it; within a block the Linears
go in data-flow order (q/k/v, o, gate/up, down), each group seeing the outputs of the quantized groups before it.

    python calibrate.py --method gptq --wbits 4 --group_size 128 [--act_order]

Notation: W (N, K) weight; H (K, K); U = upper Cholesky factor of H^-1 (so H^-1 = U^T U); s, z group scales and
zero points (quantizers/format.py). Dead inputs (H_jj = 0) are pinned to 0 and damping adds --damp * mean(diag H) to
the diagonal (scale-free), multiplied by 10 until the Cholesky factorisation succeeds (walk.pin_dead,
walk.inverse_hessian_factor, shared with Quant-dLLM).
"""
from dataclasses import dataclass

import torch

from cli import opt
from quantizers.core import gptq_columns, lowest_code, qlinear, swap
from quantizers.format import fit_grid, group_width
from quantizers.walk import INPUT_GROUPS, gram, input_stats, inverse_hessian_factor, pin_dead, walk_blocks

KIND = "rounder"  # replaces each float Linear by a QLinear
ACTIVATIONS = False  # --bits N means W{N}A16


@dataclass
class Flags:
    act_order: bool = opt(False, "quantize columns in order of decreasing H_jj (static groups)")


@torch.no_grad()
def gptq(W, H, bits, group_size=128, sym=False, damp=0.01, block_size=128, act_order=False, clip=1.0, dtype=None,
         lo=0):
    """W (N, K), H (K, K) -> codes (N, K) uint8 from lo up, scales and zeros (N, G), the damping used. dtype: the
    scales' stored dtype (default W's), to which they are rounded before any code is chosen.

    Group grids are fitted to the updated weights when a group's first column comes up; with act_order the columns
    go in order of decreasing H_jj and the grids are fitted once, beforehand, per natural group (static groups)."""
    dtype = dtype or W.dtype
    W, H = pin_dead(W, H)
    N, K = W.shape
    g = group_width(K, group_size)
    perm = torch.argsort(H.diagonal(), descending=True) if act_order else torch.arange(K, device=W.device)
    empty = (torch.empty(N, K // g, device=W.device),) * 2
    S, Z = fit_grid(W, bits, group_size, sym, clip, dtype) if act_order else empty
    S, Z = S.clone(), Z.clone()
    W, H = W[:, perm], H[perm][:, perm]
    U, damp = inverse_hessian_factor(H, damp)
    group_of = perm // g
    Q = torch.zeros(N, K, dtype=torch.uint8, device=W.device)
    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        done = None
        if act_order or g % block_size == 0:  # every grid this block uses is known at its start: one kernel on CUDA
            if not act_order and i1 % g == 0:
                S[:, i1 // g], Z[:, i1 // g] = (t[:, 0] for t in fit_grid(W[:, i1:i1 + g], bits, -1, sym, clip, dtype))
            done = gptq_columns(W[:, i1:i2], U[i1:i2, i1:i2], S, Z, group_of[i1:i2], bits, lo)
        Q[:, i1:i2], E1 = done if done is not None else round_columns(W, U, S, Z, group_of, i1, i2, g, bits, sym,
                                                                      clip, dtype, act_order, lo)
        W[:, i2:] -= E1 @ U[i1:i2, i2:]  # spread the block's errors, lazily, over the columns after it
    return Q[:, torch.argsort(perm)], S, Z, damp


def round_columns(W, U, S, Z, group_of, i1, i2, g, bits, sym, clip, dtype, act_order, lo=0):
    """Columns i1..i2 of W one at a time (Algorithm 1's inner loop) -> their codes and scaled errors E1 (N, i2 - i1).
    A group's grid is fitted to the weights as updated so far when its first column comes up (act_order: fitted
    beforehand). The twin of kernels/gptq_cols.py, which runs it on CUDA when no grid is fitted mid-block."""
    W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
    Q1, E1 = torch.zeros(W.shape[0], i2 - i1, dtype=torch.uint8, device=W.device), torch.zeros_like(W1)
    groups = group_of[i1:i2].tolist()  # on the host: indexing by a GPU scalar would wait for the GPU every column
    for i in range(i2 - i1):
        col = i1 + i
        if not act_order and col % g == 0:  # this group's grid, from the weights as updated so far
            S[:, col // g], Z[:, col // g] = (t[:, 0] for t in fit_grid(
                torch.cat([W1[:, i:], W[:, i2:]], 1)[:, :g], bits, -1, sym, clip, dtype))
        s, z = S[:, groups[i]], Z[:, groups[i]]
        q = torch.clamp(torch.round(W1[:, i] / s) + z, lo, 2 ** bits - 1)
        Q1[:, i] = q.to(torch.uint8)
        E1[:, i] = (W1[:, i] - (q - z) * s) / U1[i, i]
        W1[:, i:] -= E1[:, i:i + 1] @ U1[i:i + 1, i:]  # spread the error over this block's later columns
    return Q1, E1


def gptq_block(block, inputs, args, token_weights=None):
    """Round every Linear of one block by GPTQ, group after group; token_weights (N, T) turn H into
    sum_j w_j x_j x_j^T (CGQ, quantizers/dllmquant.py)."""
    for names in INPUT_GROUPS:
        H = input_stats(block, inputs, names[:1], gram, token_weights)[names[0]]
        for name in names:
            lin = block.get_submodule(name)
            q, s, z, _ = gptq(lin.weight, H, args.wbits, args.group_size, args.sym, args.damp,
                              act_order=args.act_order, clip=args.w_clip, lo=lowest_code(args))
            swap(block, name, qlinear(lin, q, s, z, args))


def quantize(model, calib, args):
    for _, block, inputs in walk_blocks(model, calib, args.device):
        gptq_block(block, inputs, args)
