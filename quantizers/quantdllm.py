"""
Quant-dLLM (Zhang et al. 2025, arXiv:2510.03274): 2-bit weight-only quantization of dLLMs. The paper's code is not
released; this follows its equations and a public reproduction's reading of them.
  MCS   masked calibration simulation: calibrate.py --calib_mode masked; H = S + eps I is the second moment of the
        masked canvases' inputs, eps = damp * mean(diag S).
  Z     importance Z_ij = (W_ij / [H^-1]_jj)^2 (the paper's (W D^-1) * (W D^-1), D = diag(H^-1)).
  DAQ   each column group g is W_g ~ sum_{k=1..K} (a_r^(k) a_c^(k)^T) * B_k with B_k in {-1, +1}, fitted to the
        weighted loss ||L * (W - W^)||_F^2 with L = 1 + (lambda - 1) [|Z~| > 3] (3-sigma outliers of the
        standardised Z up-weighted, lambda = 2). Orders are first fitted greedily on the residual; then
        --daq_iters rounds of: closed-form a_r^(k) = sum_j L^2 R B a_c / sum_j L^2 a_c^2 (and a_c alike) with R the
        residual of the other orders, and re-binarisation of all K signs of each weight jointly over the 2^K
        patterns. Every step is an exact minimisation of the loss in its variables, so the loss never rises.
  ABMP  per Linear, group scores s_g = sum Z over the group; the top k% of groups get K = 3, the bottom k% K = 1,
        the rest K = 2, so the average is exactly 2 bits (k = 5% LLaDA, 10% Dream; --abmp_k; --wbits b shifts all
        three by b - 2). A Linear with fewer than 1 / (2k) groups (the tiny models have 2 to 6 at 128) has
        round(k G) = 0 such groups and stays at K = 2 throughout.
  GPTQ-style compensation (the reproduction found it necessary; the paper is silent): with U the Cholesky factor
        of H^-1, after group g is fitted its error is spread over the later columns, W[:, later] -= E U_g,later,
        as in GPTQ's lazy block update. --daq_compensate column (default) also goes column by column inside the
        group, as GPTQ does: each column takes the sign pattern nearest to its updated weights on the grid the DAQ
        fit defines, E[:, j] = (w_j - q_j) / U_jj, and the later columns of the group absorb it (on a GPU in one
        launch per group: kernels/binary_cols.py). On the tiny model's real layer inputs this halves the output
        error of `group` (tests/test_dllm_methods.py).

    python calibrate.py --method quantdllm --wbits 2 --calib_mode masked

The group size is --group_size (128 by default), lowered to the largest divisor of a width that it does not divide
(tiny-dream's 592 gets 74). Stored as core.BinaryLinear: 1 bit per sign plane plus a_r, a_c in the model dtype.
"""
from dataclasses import dataclass

import torch

from cli import InputError, opt
from quantizers.core import BinaryLinear, binary_columns, swap
from quantizers.format import group_width
from quantizers.walk import INPUT_GROUPS, gram, input_stats, inverse_hessian_factor, pin_dead, walk_blocks

KIND = "rounder"  # replaces each float Linear by a BinaryLinear
ACTIVATIONS = False  # --bits N means W{N}A16


@dataclass
class Flags:
    abmp_k: float = opt(-1.0, "ABMP: share of column groups one bit above, and one below, --wbits (-1: 0.05 for LLaDA, "
                              "0.10 for Dream)")
    daq_iters: int = opt(10, "DAQ: rounds of scale refits and joint re-binarisation")
    daq_lambda: float = opt(2.0, "DAQ: loss weight of the 3-sigma outliers of the importance Z")
    daq_compensate: str = opt("column", "GPTQ-style error compensation per column, or per group only")


def resolve(args):
    if not (args.abmp_k == -1 or 0 <= args.abmp_k <= 0.5) or args.daq_iters < 0 or args.daq_lambda < 1:
        raise InputError(f"--abmp_k {args.abmp_k}, --daq_iters {args.daq_iters}, --daq_lambda {args.daq_lambda}: "
                         "expected -1 or in [0, 0.5], >= 0 and >= 1")
    if args.daq_compensate not in ("column", "group"):
        raise InputError(f"--daq_compensate {args.daq_compensate!r} is unknown (expected column or group)")


def importance(W, U):
    """Z = (W / diag(H^-1))^2 with H^-1 = U^T U."""
    return (W.float() / U.pow(2).sum(0)).pow(2)


def outlier_weights(Z, lam=2.0):
    """L = 1 + (lambda - 1) [|Z~| > 3], Z~ = (Z - mean) / std over the layer."""
    return 1 + (lam - 1) * ((Z - Z.mean()) / Z.std()).abs().gt(3).float()


def abmp_orders(Z, group_size, k, bits=2):
    """Orders per column group: the top round(k G) groups by sum Z get bits + 1, as many bottom groups bits - 1,
    the rest bits, so the mean is exactly `bits`."""
    scores = Z.view(Z.shape[0], -1, group_size).sum((0, 2))
    G, n = len(scores), int(round(k * len(scores)))
    orders = torch.full((G,), bits, dtype=torch.long)
    rank = torch.argsort(scores, descending=True)
    orders[rank[:n]], orders[rank[G - n:] if n else rank[:0]] = bits + 1, bits - 1
    return orders.tolist()


def rebuild(ar, ac, B):
    """W^ = sum_k (a_r^(k) a_c^(k)^T) * B_k."""
    return torch.einsum("kn,kg,kng->ng", ar, ac, B)


def sign_patterns(K, like):
    """All 2^K sign vectors, (2^K, K)."""
    return torch.cartesian_prod(*[torch.tensor([-1.0, 1.0])] * K).view(-1, K).to(like)


def weighted_loss(W, L2, ar, ac, B):
    return (L2 * (W - rebuild(ar, ac, B)).pow(2)).sum()  # a tensor: daq reads its history once, at the end


def fit_scales(R, L2, B, ac):
    """Closed-form a_r for fixed B, a_c, then a_c for that a_r: weighted least squares, row by row and column by
    column."""
    ar = (L2 * R * B * ac).sum(1) / (L2 * ac.pow(2)).sum(1).clamp(min=1e-12)
    ac = (L2 * R * B * ar[:, None]).sum(0) / (L2 * ar[:, None].pow(2)).sum(0).clamp(min=1e-12)
    return ar, ac


def daq(W, K, L2, iters=10, track=False):
    """W (N, g), order K, weights L2 = L^2 -> a_r (K, N), a_c (K, g), B (K, N, g) in {-1, +1}, and with track the
    weighted loss before the rounds and after each (None without: it costs launches the search does not need)."""
    W = W.float()
    N, g = W.shape
    ar, ac, B = torch.zeros(K, N), torch.ones(K, g), torch.ones(K, N, g)
    ar, ac, B = ar.to(W), ac.to(W), B.to(W)
    R = W.clone()
    for k in range(K):  # greedy: each order binarises what the previous ones left
        B[k] = torch.where(R >= 0, 1.0, -1.0)
        ar[k], ac[k] = fit_scales(R, L2, B[k], ac[k])
        R -= ar[k, :, None] * ac[k] * B[k]
    history = [weighted_loss(W, L2, ar, ac, B)] if track else None
    patterns = sign_patterns(K, W)
    for _ in range(iters):
        for k in range(K):
            R = W - rebuild(ar, ac, B) + ar[k, :, None] * ac[k] * B[k]
            ar[k], ac[k] = fit_scales(R, L2, B[k], ac[k])
        A = ar[:, :, None] * ac[:, None, :]  # (K, N, g): every order's magnitude at every weight
        err = (W[None] - torch.einsum("pk,kng->png", patterns, A)).pow(2)
        B = patterns[err.argmin(0)].permute(2, 0, 1).contiguous()  # the best of 2^K sign patterns, per weight
        if track:
            history.append(weighted_loss(W, L2, ar, ac, B))
    return ar, ac, B, torch.stack(history).tolist() if track else None


@torch.no_grad()
def round_columns(W, ar, ac, U):
    """GPTQ's column loop on the DAQ grid: each column of the group W (N, g) takes the sign pattern nearest to its
    weights as updated so far, and its error is spread over the group's later columns -> B (K, N, g), E (N, g)."""
    W, K = W.clone(), len(ar)
    patterns = sign_patterns(K, W)
    B, E = torch.empty(K, *W.shape, device=W.device), torch.zeros_like(W)
    for j in range(W.shape[1]):
        points = patterns @ (ar * ac[:, j:j + 1])  # (2^K, N): the grid of column j, row by row
        best = (points - W[:, j]).abs().argmin(0)
        B[:, :, j] = patterns[best].T
        E[:, j] = (W[:, j] - points.gather(0, best[None])[0]) / U[j, j]
        W[:, j:] -= E[:, j:j + 1] @ U[j:j + 1, j:]
    return B, E


@torch.no_grad()
def quantdllm(W, H, bits=2, group_size=128, k=0.05, lam=2.0, iters=10, damp=0.01, per_column=True):
    """W (N, K), H (K, K) -> signs (P, N, g), a_r (P, N), a_c (P, g), orders per group (P = sum of orders)."""
    W, H = pin_dead(W, H)
    g = group_width(W.shape[1], group_size)
    U, _ = inverse_hessian_factor(H, damp)
    Z = importance(W, U)
    L2, orders = outlier_weights(Z, lam).pow(2), abmp_orders(Z, g, k, bits)
    signs, rows, cols = [], [], []
    for i, K in enumerate(orders):
        i1, i2 = i * g, (i + 1) * g
        Wg, Ug = W[:, i1:i2], U[i1:i2, i1:i2]
        ar, ac, B, _ = daq(Wg, K, L2[:, i1:i2], iters)
        if per_column:  # on a GPU the Triton kernel (kernels/binary_cols.py), elsewhere its twin
            B, E = binary_columns(Wg, ar, ac, Ug) or round_columns(Wg, ar, ac, Ug)
        else:  # group-level compensation only: E U_gg = the group's error
            E = torch.linalg.solve_triangular(Ug, Wg - rebuild(ar, ac, B), upper=True, left=False)
        W[:, i2:] -= E @ U[i1:i2, i2:]
        signs.append(B), rows.append(ar), cols.append(ac)
    return torch.cat(signs), torch.cat(rows), torch.cat(cols), orders


def quantize(model, calib, args):
    k = args.abmp_k if args.abmp_k >= 0 else (0.05 if model.args.family == "llada" else 0.10)
    print(f"quantdllm: W{args.wbits} average, ABMP k = {k:.0%} of the groups one bit above and below", flush=True)
    for _, block, inputs in walk_blocks(model, calib, args.device):
        for names in INPUT_GROUPS:
            H = input_stats(block, inputs, names[:1], gram)[names[0]]
            for name in names:
                lin = block.get_submodule(name)
                B, ar, ac, orders = quantdllm(lin.weight, H, args.wbits, args.group_size, k, args.daq_lambda,
                                              args.daq_iters, args.damp, args.daq_compensate == "column")
                swap(block, name, BinaryLinear.from_planes(B, ar, ac, orders, lin.bias, lin.weight.dtype))
